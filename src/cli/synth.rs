//! `allconv synth DIR`: a synthetic two-class set of 16-bit mammogram-like PNGs
//! (`data::synthetic`: a textured breast shape; `pos` adds a bright blurred mass) in
//! `DIR/{train,val,test}/{neg,pos}`, to try `allconv finetune` without data of one's own;
//! with `--patches`, three classes of square patches differing by shape
//! (`DIR/{train,val,test}/{background,malignant,benign}`), to try `allconv train-patch`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder (train/, val/ and test/ are made in it).
    pub dir: PathBuf,
    /// Images per class in train/ (val/ and test/ get half as many).
    #[arg(long, default_value_t = 32)]
    pub per_class: usize,
    /// Image size HxW.
    #[arg(long, value_parser = crate::parse_size, default_value = "64x64")]
    pub size: crate::Size,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Three classes of square patches (background texture, a round blob, a bar) for
    /// train-patch, instead of two classes of mammogram-like images.
    #[arg(long)]
    pub patches: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn main(a: SynthArgs) -> ExitCode {
    let [h, w] = a.size[..] else {
        return crate::fail(a.json, "--size: expected HxW");
    };
    let mut counts = Vec::new();
    for (i, (part, n)) in [
        ("train", a.per_class),
        ("val", a.per_class.div_ceil(2)),
        ("test", a.per_class.div_ceil(2)),
    ]
    .into_iter()
    .enumerate()
    {
        let d = a.dir.join(part);
        let seed = a.seed + i as u64;
        let written = if a.patches {
            if h != w {
                return crate::fail(a.json, "--patches: patches are square (--size NxN)");
            }
            allconv::data::synthetic::write_patch_shapes(&d, n, seed, h)
        } else {
            allconv::data::synthetic::write_two_class(&d, n, seed, h, w)
        };
        match written {
            Ok(set) => counts.push((part, set.files.len())),
            Err(e) => return crate::fail(a.json, e),
        }
    }
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"dir": a.dir.display().to_string(), "images": counts.iter().map(|(p, n)| (p.to_string(), *n)).collect::<std::collections::BTreeMap<_, _>>()})
        );
    } else {
        for (p, n) in counts {
            outln!(
                "wrote {} ({n} images, {h}x{w}, 16-bit)",
                a.dir.join(p).display()
            );
        }
    }
    ExitCode::SUCCESS
}
