//! `allconv inspect`: what a Keras file holds (versions, layers, shapes, parameters).

use allconv::keras::read_model;
use allconv::report::InspectReport;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: crate::ModelArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn main(a: InspectArgs) -> ExitCode {
    let json = a.json;
    match read_model(&a.model.model, &a.model.options()) {
        Ok(g) => {
            let r = InspectReport::new(&g);
            if json {
                match serde_json::to_string_pretty(&r) {
                    Ok(s) => outln!("{s}"),
                    Err(e) => return crate::fail(json, e),
                }
            } else {
                out!("{}", r.to_text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(json, e),
    }
}
