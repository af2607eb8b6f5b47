//! Every config shipped in `configs/` parses, and its scheduler section builds the training
//! scheduler and every grid scheduler it names (a typo there would otherwise surface only
//! when someone runs that recipe).

use ember_core::HostTensor;
use ember_schedulers::registry;
use ember_train::TrainConfig;
use std::path::Path;

#[test]
fn shipped_configs_parse_and_build_their_schedulers() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs"));
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("configs/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let config =
            TrainConfig::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        registry::from_config_json::<HostTensor>(&config.scheduler)
            .unwrap_or_else(|e| panic!("{}: [scheduler]: {e}", path.display()));
        for name in &config.sampling.schedulers {
            registry::from_class_name::<HostTensor>(name, Some(&config.scheduler))
                .unwrap_or_else(|e| panic!("{}: [sampling] {name}: {e}", path.display()));
        }
        seen += 1;
    }
    assert!(seen >= 4, "expected the four shipped configs, found {seen}");
}
