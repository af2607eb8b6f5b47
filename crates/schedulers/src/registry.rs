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
        info::<crate::dpmsolver_multistep::DpmSolverMultistepConfig>("DPM-Solver / DPM-Solver++ multistep (ODE or SDE), orders 1-3"),
        info::<crate::dpmsolver_singlestep::DpmSolverSinglestepConfig>("DPM-Solver / DPM-Solver++ singlestep, orders 1-3 per block"),
        info::<crate::edm_euler::EdmEulerConfig>("EDM Euler: Karras et al. 2022 preconditioned Euler in sigma, optional churn"),
        info::<crate::edm_dpmsolver_multistep::EdmDpmSolverMultistepConfig>("EDM DPM-Solver++: multistep DPM-Solver++ on the EDM formulation"),
        info::<crate::euler_discrete::EulerDiscreteConfig>("Euler: first-order probability-flow ODE steps in sigma (Karras churn optional)"),
        info::<crate::euler_ancestral_discrete::EulerAncestralDiscreteConfig>("Euler ancestral: Euler step to sigma_down plus fresh noise sigma_up"),
        info::<crate::heun_discrete::HeunDiscreteConfig>("Heun: second-order predictor-corrector in sigma (Karras et al. 2022, Alg. 1)"),
        info::<crate::lms_discrete::LmsDiscreteConfig>("LMS: linear multistep (Adams-Bashforth) in sigma, order 4 by default"),
        info::<crate::k_dpm_2_discrete::KDpm2DiscreteConfig>("KDPM2: DPM-Solver-2 with a geometric-mean midpoint in sigma"),
        info::<crate::k_dpm_2_ancestral_discrete::KDpm2AncestralDiscreteConfig>("KDPM2 ancestral: DPM-Solver-2 to sigma_down plus fresh noise sigma_up"),
        info::<crate::unipc_multistep::UniPCMultistepConfig>("UniPC: unified predictor-corrector multistep solver (bh1/bh2, orders 1-3)"),
        info::<crate::deis_multistep::DEISMultistepConfig>("DEIS: exponential-integrator multistep solver in log-rho (orders 1-3)"),
        info::<crate::flow_match_heun_discrete::FlowMatchHeunDiscreteConfig>("Flow matching: Heun's second-order method on the rectified-flow ODE"),
        info::<crate::ddpm::DdpmConfig>("DDPM: ancestral sampling from the posterior, fixed or learned variance"),
        info::<crate::ddim::DdimConfig>("DDIM: deterministic (eta = 0) or stochastic implicit sampler"),
        info::<crate::ddim_inverse::DdimInverseConfig>("DDIM inversion: deterministic DDIM from clean sample to noise"),
        info::<crate::pndm::PndmConfig>("PNDM: Runge-Kutta warm-up then 4th-order linear multistep (PLMS)"),
        info::<crate::lcm::LcmConfig>("LCM: latent consistency model multistep sampling"),
        info::<crate::tcd::TcdConfig>("TCD: trajectory consistency distillation with gamma-controlled stochasticity"),
        info::<crate::flow_match_euler_discrete::FlowMatchEulerDiscreteConfig>("Flow matching: Euler on the rectified-flow ODE (SD3, Flux), optional stochastic re-noising"),
    ]
});

/// Builds a scheduler from a diffusers `scheduler_config.json` value; `_class_name` picks
/// the type.
pub fn from_config_json<S: SampleTensor>(json: &Value) -> Result<Box<dyn Scheduler<S>>> {
    let name = json
        .get("_class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Parse {
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
    let mut json = base
        .cloned()
        .unwrap_or_else(|| Value::Object(Default::default()));
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
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let json = crate::config::parse_config_text(&text, &path.display().to_string())?;
    from_config_json(&json)
}

/// Writes a scheduler's configuration as `scheduler_config.json` text that diffusers reads
/// (non-finite values as Python's `-Infinity` etc.). The file is written to a temporary
/// name and renamed, so a crash never leaves half a config behind.
pub fn save_config_file<S: SampleTensor>(
    scheduler: &dyn Scheduler<S>,
    path: &std::path::Path,
) -> Result<()> {
    let text = crate::config::config_to_text(&scheduler.config_json());
    let tmp = path.with_extension("json.tmp");
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    std::fs::write(&tmp, text + "\n").map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn build<S: SampleTensor>(name: &str, json: &Value) -> Result<Box<dyn Scheduler<S>>> {
    #[allow(unused_macros)]
    macro_rules! make {
        ($ty:ty) => {
            Ok(Box::new(<$ty>::from_config(crate::config::parse_config(
                json,
            )?)?))
        };
    }
    match name {
        // REGISTRY-BUILD (one arm per scheduler)
        "DPMSolverMultistepScheduler" => {
            make!(crate::dpmsolver_multistep::DpmSolverMultistepScheduler<S>)
        }
        "DPMSolverSinglestepScheduler" => {
            make!(crate::dpmsolver_singlestep::DpmSolverSinglestepScheduler<S>)
        }
        "EDMEulerScheduler" => make!(crate::edm_euler::EdmEulerScheduler),
        "EDMDPMSolverMultistepScheduler" => {
            make!(crate::edm_dpmsolver_multistep::EdmDpmSolverMultistepScheduler<S>)
        }
        "EulerDiscreteScheduler" => make!(crate::euler_discrete::EulerDiscreteScheduler),
        "EulerAncestralDiscreteScheduler" => {
            make!(crate::euler_ancestral_discrete::EulerAncestralDiscreteScheduler)
        }
        "HeunDiscreteScheduler" => make!(crate::heun_discrete::HeunDiscreteScheduler<S>),
        "LMSDiscreteScheduler" => make!(crate::lms_discrete::LmsDiscreteScheduler<S>),
        "KDPM2DiscreteScheduler" => make!(crate::k_dpm_2_discrete::KDpm2DiscreteScheduler<S>),
        "KDPM2AncestralDiscreteScheduler" => {
            make!(crate::k_dpm_2_ancestral_discrete::KDpm2AncestralDiscreteScheduler<S>)
        }
        "UniPCMultistepScheduler" => make!(crate::unipc_multistep::UniPCMultistepScheduler<S>),
        "DEISMultistepScheduler" => make!(crate::deis_multistep::DEISMultistepScheduler<S>),
        "FlowMatchHeunDiscreteScheduler" => {
            make!(crate::flow_match_heun_discrete::FlowMatchHeunDiscreteScheduler<S>)
        }
        "DDPMScheduler" => make!(crate::ddpm::DdpmScheduler),
        "DDIMScheduler" => make!(crate::ddim::DdimScheduler),
        "DDIMInverseScheduler" => make!(crate::ddim_inverse::DdimInverseScheduler),
        "PNDMScheduler" => make!(crate::pndm::PndmScheduler<S>),
        "LCMScheduler" => make!(crate::lcm::LcmScheduler),
        "TCDScheduler" => make!(crate::tcd::TcdScheduler),
        "FlowMatchEulerDiscreteScheduler" => {
            make!(crate::flow_match_euler_discrete::FlowMatchEulerDiscreteScheduler)
        }
        _ => Err(Error::unknown(
            "scheduler",
            name,
            &SCHEDULERS.iter().map(|s| s.class_name).collect::<Vec<_>>(),
        )),
    }
}
