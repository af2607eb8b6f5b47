//! Run-time choice of a scheduler by diffusers class name (`from_config`).

use crate::config::SchedulerConfig;
use ember_core::{Error, Result, SampleTensor, Scheduler};
use serde_json::Value;

/// One entry of the scheduler registry.
pub struct SchedulerInfo {
    /// diffusers' class name.
    pub class_name: &'static str,
    /// One-line description.
    pub summary: &'static str,
    /// The default configuration, as `scheduler_config.json` would hold it.
    pub default_config: fn() -> Value,
}

fn info<C: SchedulerConfig>(summary: &'static str) -> SchedulerInfo {
    SchedulerInfo {
        class_name: C::CLASS_NAME,
        summary,
        default_config: || crate::config::config_to_json(&C::default()),
    }
}

/// Every scheduler Ember implements, in the order `ember schedulers` lists them.
pub static SCHEDULERS: std::sync::LazyLock<Vec<SchedulerInfo>> = std::sync::LazyLock::new(|| {
    vec![
        // REGISTRY-INFO (one line per scheduler; keep sorted by family)
    ]
});

/// Builds a scheduler from a diffusers `scheduler_config.json` value; `_class_name` picks
/// the type.
pub fn from_config_json<S: SampleTensor>(json: &Value) -> Result<Box<dyn Scheduler<S>>> {
    let name = json.get("_class_name").and_then(Value::as_str).ok_or_else(|| Error::Parse {
        what: "scheduler config".into(),
        message: "missing `_class_name`".into(),
    })?;
    build::<S>(name, json)
}

/// Builds the scheduler `class_name`, taking every key it shares with `base` (like
/// diffusers' `NewScheduler.from_config(old.config)`); `base = None` uses the defaults.
pub fn from_class_name<S: SampleTensor>(
    class_name: &str,
    base: Option<&Value>,
) -> Result<Box<dyn Scheduler<S>>> {
    let mut json = base.cloned().unwrap_or_else(|| Value::Object(Default::default()));
    if let Some(obj) = json.as_object_mut() {
        obj.insert("_class_name".into(), Value::String(class_name.into()));
    }
    build::<S>(class_name, &json)
}

/// Swaps a scheduler for another class, keeping the shared configuration.
pub fn swap<S: SampleTensor>(
    current: &dyn Scheduler<S>,
    class_name: &str,
) -> Result<Box<dyn Scheduler<S>>> {
    from_class_name::<S>(class_name, Some(&current.config_json()))
}

/// Reads a `scheduler_config.json` file and builds the scheduler it names.
pub fn load_config_file<S: SampleTensor>(path: &std::path::Path) -> Result<Box<dyn Scheduler<S>>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Parse { what: path.display().to_string(), message: e.to_string() })?;
    from_config_json(&json)
}

fn build<S: SampleTensor>(name: &str, json: &Value) -> Result<Box<dyn Scheduler<S>>> {
    #[allow(unused_macros)]
    macro_rules! make {
        ($ty:ty) => {
            Ok(Box::new(<$ty>::from_config(crate::config::parse_config(json)?)?))
        };
    }
    match name {
        // REGISTRY-BUILD (one arm per scheduler)
        _ => Err(Error::unknown(
            "scheduler",
            name,
            &SCHEDULERS.iter().map(|s| s.class_name).collect::<Vec<_>>(),
        )),
    }
}
