//! `tpv fetch`: the offline assets into the cache.

use anyhow::{Result, bail};

use crate::assets;
use crate::cli::FetchArgs;

pub fn run(args: &FetchArgs) -> Result<()> {
    let wanted: Vec<&assets::Asset> = if args.what.is_empty() {
        assets::ALL.to_vec()
    } else {
        args.what
            .iter()
            .map(|w| match assets::ALL.iter().find(|a| a.name == w) {
                Some(a) => Ok(*a),
                None => bail!("unknown asset {w:?}; known: {}", assets::ALL.map(|a| a.name).join(", ")),
            })
            .collect::<Result<_>>()?
    };
    let mut fetched = Vec::new();
    for asset in wanted {
        let path = assets::ensure(asset)?;
        if !args.json {
            out!("{}: {}", asset.name, path.display());
        }
        fetched.push(serde_json::json!({ "name": asset.name, "path": path.display().to_string() }));
    }
    if args.json {
        super::print_json(&serde_json::Value::Array(fetched))?;
    }
    Ok(())
}
