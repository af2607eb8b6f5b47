//! # ember-schedulers
//!
//! Every diffusers scheduler, with diffusers' class names, config keys and numbers, plus
//! score-SDE and k-diffusion samplers and the training-side helpers (SNR weights,
//! timestep samplers, regression targets). Schedule maths runs on the host in f64; tensors
//! only see the resulting scalars, through [`ember_core::SampleTensor`], so one scheduler
//! serves every rank and every burn backend.
//!
//! ```
//! use ember_core::{HostTensor, NoiseSource, SampleTensor, Scheduler};
//! use ember_schedulers::from_config_json;
//!
//! // Runtime choice by diffusers class name, as in a scheduler_config.json.
//! let cfg = serde_json::json!({"_class_name": "DDIMScheduler", "timestep_spacing": "trailing"});
//! let mut s = from_config_json::<HostTensor>(&cfg).unwrap();
//! s.set_timesteps(10).unwrap();
//! let mut x = NoiseSource::new(0).initial_noise(&[1, 2, 4, 4], 0);
//! for t in s.timesteps().to_vec() {
//!     let eps = x.scale(0.1); // stand-in for a model's noise prediction
//!     x = s.step(&eps, t, &x, None).unwrap().prev_sample;
//! }
//! assert!(x.all_finite());
//! ```

pub mod analytic;
pub mod config;
pub mod ddim;
pub mod ddim_inverse;
pub mod ddpm;
pub mod ddpm_common;
pub mod deis_multistep;
pub mod dpm_solver;
pub mod dpmsolver_multistep;
pub mod dpmsolver_singlestep;
pub mod edm_dpmsolver_multistep;
pub mod edm_euler;
pub mod euler_ancestral_discrete;
pub mod euler_discrete;
pub mod flow_match_euler_discrete;
pub mod flow_match_heun_discrete;
pub mod flow_sigmas;
pub mod heun_discrete;
pub mod k_diffusion;
pub mod k_dpm_2_ancestral_discrete;
pub mod k_dpm_2_discrete;
pub mod lcm;
pub mod lms_discrete;
pub mod pndm;
pub mod registry;
pub mod schedule;
pub mod score_sde;
pub mod sigma_schedule;
pub mod sigmas;
pub mod tcd;
pub mod training;
pub mod unipc_multistep;
pub mod vp_solver;

pub use config::{config_to_json, parse_config, SchedulerConfig};
pub use registry::{
    from_class_name, from_config_json, load_config_file, save_config_file, swap, SCHEDULERS,
};
pub use schedule::{BetaSchedule, TrainSchedule};
