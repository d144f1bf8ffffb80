//! The examples that end each command's `--help` (clap's `after_help`), and so its man page
//! (`allconv man`). Each runs as shown from the repository root, on the bundled fixtures;
//! tests/cli_help.rs parses every one through the command line and runs the quick ones, so
//! an example cannot fall out of step with the options.
//!
//! Add one with the `examples!` macro (two or three `"comment" => "command"` pairs; a long
//! command may continue on the next line after ` \` plus a newline and six spaces), and
//! hang it on the command with `#[command(after_help = cli::examples::NAME)]`.

// The edge build leaves out some commands, and so uses only some of these.
#![allow(dead_code)]

/// `Examples:` then, for each pair, `  # comment` and `  command`, a blank line between.
macro_rules! examples {
    ($first_comment:literal => $first_cmd:literal $(, $comment:literal => $cmd:literal)* $(,)?) => {
        concat!(
            "\x1b[1m\x1b[4mExamples:\x1b[0m\n  # ", $first_comment, "\n  ", $first_cmd,
            $("\n\n  # ", $comment, "\n  ", $cmd,)*
        )
    };
}

pub const ALLCONV: &str = examples!(
    "Convert a bundled Keras 2.0.8 whole-image model to ONNX; genuine Keras's output becomes its test vector"
        => "allconv convert fixtures/k208tf_resnet50_whole_resnet/model.h5 -o whole.onnx \\
      --reference fixtures/k208tf_resnet50_whole_resnet/io.npz",
    "Check the file against the numbers it carries"
        => "allconv verify whole.onnx",
    "Score two mammograms with it"
        => "allconv predict whole.onnx fixtures/images/mdb001.pgm fixtures/images/mdb028.pgm \\
      --preprocess rescale=0.0078125,mean=0.5",
);

pub const INSPECT: &str = examples!(
    "Versions, layer table and parameter count of a bundled Keras 2.0.8 model"
        => "allconv inspect fixtures/k208tf_resnet50_whole_resnet/model.h5",
    "The same at the paper's whole-image size, as JSON"
        => "allconv inspect fixtures/k208tf_resnet50_whole_resnet/model.h5 --input-size 1152x896 --json",
    "A Keras 1.2.2 file, which does not record the backend that wrote its kernels"
        => "allconv inspect fixtures/k122_th_conv/model.h5 --source-backend theano",
);

pub const PREDICT: &str = examples!(
    "Score mammograms with a Keras .h5 (converted in memory), images scaled to the model's input"
        => "allconv predict fixtures/k208tf_resnet50_whole_resnet/model.h5 fixtures/images/mdb001.pgm \\
      fixtures/images/mdb028.jpg --preprocess rescale=0.0078125,mean=0.5",
    "An archive: shard 0 of 2 of a CSV manifest, 4-flip TTA, resumable Parquet chunks in scores/"
        => "allconv predict fixtures/k208tf_resnet50_whole_resnet/model.h5 \\
      --manifest fixtures/images/manifest.csv --out scores --shard 0/2 \\
      --preprocess rescale=0.0078125,mean=0.5 --tta",
    "Run a patch classifier over a whole mammogram and write a heatmap overlay into heatmaps/"
        => "allconv predict fixtures/k208tf_yaroslav_patch/model.h5 fixtures/images/mdb028.pgm \\
      --preprocess size=512x512 --heatmap heatmaps",
);

pub const MERGE: &str = examples!(
    "The shards of `predict --manifest ... --out scores` as one Parquet file, checked complete"
        => "allconv merge scores -o scores.parquet",
    "As CSV, with a JSON report (failed and missing rows listed)"
        => "allconv merge scores -o scores.csv --json",
);

pub const CONVERT: &str = examples!(
    "To ONNX at the model's size, genuine Keras's output embedded as the test vector"
        => "allconv convert fixtures/k208tf_resnet50_whole_resnet/model.h5 -o whole.onnx \\
      --reference fixtures/k208tf_resnet50_whole_resnet/io.npz",
    "For a device: tract's NNEF with float16 weights, preprocessing and 4-flip TTA in the graph"
        => "allconv convert fixtures/k208tf_resnet50_whole_resnet/model.h5 -o whole.nnef.tgz \\
      --weights f16 --preprocess rescale=0.0078125,mean=0.5,gray --tta flips4",
    "The weights alone, as safetensors"
        => "allconv convert fixtures/k208_conv/model.h5 -o conv.safetensors",
);

pub const VERIFY: &str = examples!(
    "A Keras .h5 against genuine Keras's recorded outputs, every recorded layer compared"
        => "allconv verify fixtures/k208tf_resnet50_whole_resnet/model.h5 \\
      --reference fixtures/k208tf_resnet50_whole_resnet/io.npz --per-layer",
    "Each layer alone on the inputs Keras fed it: its own error, free of upstream drift"
        => "allconv verify fixtures/k208tf_resnet50_whole_resnet/model.h5 \\
      --reference fixtures/k208tf_resnet50_whole_resnet/io.npz --isolated",
    "The libtorch lowering instead of tract, as JSON"
        => "allconv verify fixtures/k208_conv/model.h5 --reference fixtures/k208_conv/io.npz --backend torch --json",
);

pub const BENCH: &str = examples!(
    "Time tract on a converted model at the paper's whole-image size"
        => "allconv bench run whole.onnx --shape 1x1152x896x3 --runs 3",
    "Time the conversion itself"
        => "allconv bench convert fixtures/k208tf_resnet50_whole_resnet/model.h5 -o bench.onnx",
);

pub const BENCH_RUN: &str = examples!(
    "Median latency of tract on an ONNX file, five runs on every core"
        => "allconv bench run whole.onnx --shape 1x225x177x3",
    "libtorch on the Keras file itself, single-threaded, time per op type"
        => "allconv bench run fixtures/k208tf_resnet50_whole_resnet/model.h5 --shape 1x225x177x3 \\
      --threads 1 --profile",
);

pub const BENCH_CONVERT: &str = examples!(
    "Median of three .h5 -> .onnx conversions, with peak memory"
        => "allconv bench convert fixtures/k208tf_resnet50_whole_resnet/model.h5 -o bench.onnx",
    "At the paper's whole-image size, as JSON"
        => "allconv bench convert fixtures/k208tf_resnet50_whole_resnet/model.h5 -o bench.onnx \\
      --input-size 1152x896 --repeats 1 --json",
);

pub const REHEAD: &str = examples!(
    "The paper's DDSM row: YaroslavNet patch classifier -> heatmap, pooling, FC16-8 and shortcut"
        => "allconv rehead fixtures/k208_yaroslav_patch/model.h5 -o yaroslav_whole.h5 \\
      --input-size 1024x768 --top heatmap:avg=7,stride=1,pool=5,fc=16-8,shortcut --seed 1",
    "A ResNet50 patch classifier with two ResNet blocks on top, straight to ONNX"
        => "allconv rehead fixtures/k208_resnet50_patch/model.h5 -o resnet_whole.onnx \\
      --input-size 256x192 --top resnet:512x1,512x1:enlarge=2",
    "A VGG16 patch classifier with a VGG block on top, weights as safetensors"
        => "allconv rehead fixtures/k208_vgg16_patch/model.h5 -o vgg_whole.safetensors \\
      --input-size 128x96 --top vgg:512x1",
);

pub const SYNTH: &str = examples!(
    "32 images per class in synth/train (16 in val and test), 64x64 16-bit PNGs"
        => "allconv synth synth",
    "Larger images, another draw"
        => "allconv synth synth256 --per-class 8 --size 256x192 --seed 2",
    "Three classes of 32x32 patches (background, a round blob, a bar) for train-patch"
        => "allconv synth patches --patches --size 32x32",
);

pub const FINETUNE: &str = examples!(
    "Re-head the bundled VGG16 patch classifier and train it on synthetic folders (allconv synth synth)"
        => "allconv finetune --patch-model-state fixtures/k208_vgg16_patch/model.h5 --block-type vgg \\
      --top-depths 16 --top-repetitions 1 --img-size 64 64 --rescale-factor 0.0000305 \\
      --featurewise-mean 0.5 --batch-size 16 --nb-epoch 2 --all-layer-epochs 5 --optimizer adam \\
      --no-augmentation -o finetuned/best.h5 --log finetuned/log.jsonl synth/train synth/val synth/test",
    "The paper's finetune form: a whole-image model, all layers trained (add --resume to continue a killed run)"
        => "allconv finetune fixtures/k208tf_resnet50_whole_resnet/model.h5 --img-size 225 177 \\
      --nb-epoch 0 --all-layer-epochs 2 --batch-size 8 --no-augmentation -o tuned/best.h5 \\
      synth/train synth/val synth/test",
);

pub const TRAIN_PATCH: &str = examples!(
    "VGG16 from random weights on synthetic three-class patches (allconv synth patches --patches --size 32x32)"
        => "allconv train-patch --net vgg16 --no-use-pretrained --img-size 32 32 --img-scale 255 \\
      --nb-epoch 4 --batch-size 16 --train-bs-multiplier 1 --optimizer adam --init-learningrate 0.0001 \\
      --best-model patch/patch.h5 patches/train patches/val patches/test",
    "The paper's recipe: ResNet50 from the Keras ImageNet file, three stages, sample-patches' folders"
        => "allconv train-patch --net resnet50 --imagenet-weights resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
      --class-list background malignant=calc_mal+mass_mal benign=calc_ben+mass_ben --img-scale 255 \\
      --optimizer nadam --nb-epoch 1 --top-layer-epochs 5 --all-layer-epochs 15 --auto-batch-balance \\
      --best-model patch.h5 --log patch.jsonl out/train out/val out/test",
);

pub const COMPLETIONS: &str = examples!(
    "Bash: load the completions in every new shell"
        => "allconv completions bash > ~/.local/share/bash-completion/completions/allconv",
    "Zsh: into a folder on $fpath"
        => "allconv completions zsh > ~/.zfunc/_allconv",
    "Fish"
        => "allconv completions fish > ~/.config/fish/completions/allconv.fish",
);

pub const MAN: &str = examples!(
    "Read the main page now"
        => "allconv man > allconv.1 && man -l allconv.1",
    "Install a page per command (allconv.1, allconv-convert.1, ...) where man finds them"
        => "allconv man -o ~/.local/share/man/man1",
);
