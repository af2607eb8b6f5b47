//! `PNDMScheduler`: pseudo numerical methods for diffusion models (Liu et al. 2022, "Pseudo
//! Numerical Methods for Diffusion Models on Manifolds") — a port of diffusers'
//! `scheduling_pndm.py`.
//!
//! Every step uses the "transfer" φ of PNDM eq. 9, which moves x from t to t' along the
//! DDIM trajectory given a noise estimate ε:
//!
//! ```text
//! φ(x_t, ε, t → t') = √(ᾱ_{t'}/ᾱ_t) x_t − (ᾱ_{t'} − ᾱ_t) ε / (ᾱ_t √(1 − ᾱ_{t'}) + √(ᾱ_t (1 − ᾱ_t) ᾱ_{t'}))
//! ```
//!
//! The gradient part ε is either a pseudo Runge–Kutta combination (PRK, eq. 13; four model
//! evaluations per step, used for the first three steps to warm up the history) or a linear
//! multistep combination of the last four ε (PLMS, eq. 12:
//! (55 ε₀ − 59 ε₋₁ + 37 ε₋₂ − 9 ε₋₃)/24, with lower orders while the history fills).
//!
//! # Timestep layout (as diffusers)
//! With the ascending grid g = (g₀ < … < g_{n−1}), h = T // n // 2:
//! - without `skip_prk_steps`: 12 PRK timesteps, the last three grid intervals each
//!   visited as (g, g−h, g−h, g−2h) — the RK stages at the start, midpoint (twice) and end —
//!   followed by the PLMS timesteps g_{n−4}, …, g₀ (n + 9 model evaluations in all);
//! - with `skip_prk_steps` (Stable Diffusion): g_{n−1}, g_{n−2}, g_{n−2}, g_{n−3}, …, g₀; the
//!   repeated entry is a second-order (Heun-like) correction of the first step, which has no
//!   history yet (n + 1 model evaluations).
//!
//! diffusers' `order` is 1 for this scheduler even though PRK spends four evaluations per
//! step; pipelines iterate over `timesteps()` and need nothing else.

use crate::config::{config_to_json, SchedulerConfig};
use crate::ddpm_common::{
    self as common, read_request, spaced_timesteps, StepIndex, StepsRequest, TimestepSpacing,
};
use crate::schedule::{BetaSchedule, TrainSchedule};
use ember_core::{Error, Prediction, Result, SampleTensor, Scheduler, StepOutput, TimestepRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The order of the PLMS / PRK methods (diffusers' `pndm_order`).
const PNDM_ORDER: usize = 4;

/// The configuration of [`PndmScheduler`]: diffusers' `PNDMScheduler` keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PndmConfig {
    /// Number of diffusion steps the model was trained with (T).
    pub num_train_timesteps: usize,
    /// First β of the named schedules.
    pub beta_start: f64,
    /// Last β of the named schedules.
    pub beta_end: f64,
    /// How β runs from `beta_start` to `beta_end` (linear, scaled_linear, squaredcos_cap_v2).
    pub beta_schedule: BetaSchedule,
    /// Explicit β values, overriding `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// Skip the Runge–Kutta warm-up and start with PLMS right away.
    pub skip_prk_steps: bool,
    /// Use ᾱ = 1 after the last step (else ᾱ_0).
    pub set_alpha_to_one: bool,
    /// What the model predicts: `epsilon` or `v_prediction`.
    pub prediction_type: Prediction,
    /// Layout of the inference timesteps.
    pub timestep_spacing: TimestepSpacing,
    /// Added to every timestep of the `leading` spacing.
    pub steps_offset: usize,
    /// Keys Ember does not use, kept for the round trip.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for PndmConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            skip_prk_steps: false,
            set_alpha_to_one: false,
            prediction_type: Prediction::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            extra: Map::new(),
        }
    }
}

impl SchedulerConfig for PndmConfig {
    const CLASS_NAME: &'static str = "PNDMScheduler";
    fn extra(&self) -> &Map<String, Value> {
        &self.extra
    }
    fn validate(&self) -> Result<()> {
        common::check_prediction(
            self.prediction_type,
            &[Prediction::Epsilon, Prediction::VPrediction],
            Self::CLASS_NAME,
        )?;
        common::check_beta_schedule(
            self.beta_schedule,
            &common::BASIC_BETA_SCHEDULES,
            self.trained_betas.is_some(),
            Self::CLASS_NAME,
        )
    }
}

/// diffusers' `PNDMScheduler`. Generic over the sample type because it keeps a history of
/// model outputs.
#[derive(Debug, Clone)]
pub struct PndmScheduler<S> {
    config: PndmConfig,
    schedule: TrainSchedule,
    acp: Vec<f32>,
    /// ᾱ after the last step: 1 with `set_alpha_to_one`, else ᾱ_0.
    final_alpha_cumprod: f32,
    num_inference_steps: Option<usize>,
    /// Number of PRK timesteps at the head of `timesteps` (12, or 0 with `skip_prk_steps`).
    num_prk_timesteps: usize,
    timesteps_int: Vec<i64>,
    timesteps: Vec<f64>,
    /// Steps taken since `set_timesteps` (diffusers' `counter`); drives the PRK/PLMS stages.
    counter: usize,
    /// The last (up to four) ε estimates at grid points, oldest first (diffusers' `ets`).
    ets: Vec<S>,
    /// The sample at the start of the current RK step / first PLMS step.
    cur_sample: Option<S>,
    /// The running RK4 combination (ε₁ + 2ε₂ + 2ε₃)/6 (diffusers' `cur_model_output`).
    cur_model_output: Option<S>,
    index: StepIndex,
}

impl<S: SampleTensor> PndmScheduler<S> {
    /// Builds the scheduler from a validated config.
    pub fn from_config(config: PndmConfig) -> Result<Self> {
        config.validate()?;
        let schedule = TrainSchedule::new(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas.as_deref(),
            false,
        )?;
        let acp = common::alphas_cumprod_f32(&schedule);
        Ok(Self {
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { acp[0] },
            acp,
            schedule,
            config,
            num_inference_steps: None,
            num_prk_timesteps: 0,
            timesteps_int: Vec::new(),
            timesteps: Vec::new(),
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
            cur_model_output: None,
            index: StepIndex::default(),
        })
    }

    /// The scheduler with diffusers' default configuration.
    pub fn new() -> Self {
        // The default config is valid.
        Self::from_config(PndmConfig::default()).expect("default PNDM config is valid")
    }

    /// The configuration.
    pub fn config(&self) -> &PndmConfig {
        &self.config
    }

    /// The training schedule (β, α, ᾱ).
    pub fn schedule(&self) -> &TrainSchedule {
        &self.schedule
    }

    /// The PRK timesteps (empty with `skip_prk_steps`).
    pub fn prk_timesteps(&self) -> &[f64] {
        &self.timesteps[..self.num_prk_timesteps]
    }

    /// The PLMS timesteps.
    pub fn plms_timesteps(&self) -> &[f64] {
        &self.timesteps[self.num_prk_timesteps..]
    }

    /// diffusers' `_get_prev_sample`: the transfer φ (PNDM eq. 9) from `timestep` to
    /// `prev_timestep` with noise estimate `model_output` (converted from v first).
    fn prev_sample(
        &self,
        sample: &S,
        timestep: i64,
        prev_timestep: i64,
        model_output: &S,
    ) -> Result<S> {
        let alpha_prod_t = common::alpha_at(&self.acp, timestep, self.final_alpha_cumprod)?;
        let alpha_prod_t_prev =
            common::alpha_at(&self.acp, prev_timestep, self.final_alpha_cumprod)?;
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let eps = match self.config.prediction_type {
            // ε = √ᾱ_t v + √(1 − ᾱ_t) x_t.
            Prediction::VPrediction => S::lin_comb(&[
                (f64::from(alpha_prod_t.sqrt()), model_output),
                (f64::from(beta_prod_t.sqrt()), sample),
            ]),
            _ => model_output.clone(),
        };
        let sample_coeff = (alpha_prod_t_prev / alpha_prod_t).sqrt();
        let denom = alpha_prod_t * beta_prod_t_prev.sqrt()
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt();
        let eps_coeff = (alpha_prod_t_prev - alpha_prod_t) / denom;
        Ok(S::lin_comb(&[
            (f64::from(sample_coeff), sample),
            (-f64::from(eps_coeff), &eps),
        ]))
    }

    /// The number of training steps between two grid points (`T // n`).
    fn step_ratio(&self, n: usize) -> i64 {
        (self.config.num_train_timesteps / n) as i64
    }

    /// One stage of the pseudo Runge–Kutta warm-up (diffusers' `step_prk`).
    fn step_prk(&mut self, model_output: &S, timestep: i64, sample: &S, n: usize) -> Result<S> {
        // Odd stages end at the midpoint they started from; even ones move half a grid step.
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            self.step_ratio(n) / 2
        };
        let prev_timestep = timestep - diff_to_prev;
        // Every stage of an RK step starts from the step's first timestep and sample.
        let start = self.timesteps_int[self.counter / 4 * 4];
        let eps = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(model_output.scale(1.0 / 6.0));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 | 2 => {
                let acc = self
                    .cur_model_output
                    .take()
                    .unwrap_or_else(|| model_output.zeros_like());
                self.cur_model_output = Some(acc.add(&model_output.scale(1.0 / 3.0)));
                model_output.clone()
            }
            _ => {
                // RK4: ε = (ε₁ + 2ε₂ + 2ε₃ + ε₄)/6.
                let acc = self
                    .cur_model_output
                    .take()
                    .unwrap_or_else(|| model_output.zeros_like());
                acc.add(&model_output.scale(1.0 / 6.0))
            }
        };
        let cur_sample = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        self.prev_sample(&cur_sample, start, prev_timestep, &eps)
    }

    /// One pseudo linear multistep step (diffusers' `step_plms`).
    fn step_plms(&mut self, model_output: &S, timestep: i64, sample: &S, n: usize) -> Result<S> {
        if !self.config.skip_prk_steps && self.ets.len() < 3 {
            return Err(Error::State(
                "PNDMScheduler: PLMS steps need the 12 PRK warm-up steps first (or skip_prk_steps)"
                    .into(),
            ));
        }
        let ratio = self.step_ratio(n);
        let (mut timestep, mut prev_timestep) = (timestep, timestep - ratio);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            // Second call of the skip-PRK start: redo the first interval from its start.
            prev_timestep = timestep;
            timestep += ratio;
        }
        let mut sample = sample.clone();
        let e = &self.ets;
        let eps = match e.len() {
            0 => {
                return Err(Error::State(
                    "PNDMScheduler: PLMS step without a model-output history".into(),
                ))
            }
            1 if self.counter == 0 => {
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 => {
                // Heun-like correction: the mean of the two ends' ε, from the first sample.
                if let Some(s) = self.cur_sample.take() {
                    sample = s;
                }
                model_output.add(&e[0]).scale(0.5)
            }
            // Adams–Bashforth of increasing order while the history fills (PNDM eq. 12).
            2 => e[1].scale(3.0).sub(&e[0]).scale(0.5),
            3 => S::lin_comb(&[(23.0, &e[2]), (-16.0, &e[1]), (5.0, &e[0])]).scale(1.0 / 12.0),
            k => S::lin_comb(&[
                (55.0, &e[k - 1]),
                (-59.0, &e[k - 2]),
                (37.0, &e[k - 3]),
                (-9.0, &e[k - 4]),
            ])
            .scale(1.0 / 24.0),
        };
        self.prev_sample(&sample, timestep, prev_timestep, &eps)
    }
}

impl<S: SampleTensor> Default for PndmScheduler<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: SampleTensor> Scheduler<S> for PndmScheduler<S> {
    fn class_name(&self) -> &'static str {
        PndmConfig::CLASS_NAME
    }
    fn config_json(&self) -> Value {
        config_to_json(&self.config)
    }
    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }
    fn prediction(&self) -> Prediction {
        self.config.prediction_type
    }
    fn order(&self) -> usize {
        1
    }
    fn is_stochastic(&self) -> bool {
        false
    }

    fn set_timesteps_with(&mut self, request: &TimestepRequest) -> Result<()> {
        let t_train = self.config.num_train_timesteps;
        // diffusers does not bound n here, but n > T gives a zero step ratio and repeated
        // timesteps, so Ember rejects it like the other DDPM-family schedulers.
        let StepsRequest::Count(n) =
            read_request(PndmConfig::CLASS_NAME, request, t_train, false, true)?
        else {
            // read_request rejects custom lists when they are not allowed.
            return Err(Error::argument(
                "timesteps",
                "PNDMScheduler does not accept custom timesteps",
            ));
        };
        if !self.config.skip_prk_steps && n < PNDM_ORDER {
            return Err(Error::argument(
                "num_inference_steps",
                format!("PNDM's Runge–Kutta warm-up needs at least {PNDM_ORDER} steps (got {n}); or set skip_prk_steps"),
            ));
        }
        // The ascending grid diffusers calls `_timesteps`.
        let mut grid = spaced_timesteps(
            self.config.timestep_spacing,
            t_train,
            n,
            self.config.steps_offset,
        );
        grid.reverse();
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.config.skip_prk_steps {
            // concat(g[:-1], g[-2:-1], g[-1:]) reversed: g_{n−1}, g_{n−2}, g_{n−2}, …, g₀.
            let mut plms: Vec<i64> = grid[..n - 1].to_vec();
            if n >= 2 {
                plms.push(grid[n - 2]);
            }
            plms.push(grid[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            // For the last four grid points a: (a, a + h) pairs; drop the final a + h, repeat
            // each entry twice, drop the first and last, reverse.
            let h = (t_train / n / 2) as i64;
            let pairs: Vec<i64> = grid[n - PNDM_ORDER..]
                .iter()
                .flat_map(|&a| [a, a + h])
                .collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1]
                .iter()
                .flat_map(|&a| [a, a])
                .collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = grid[..n - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let all: Vec<i64> = prk.iter().chain(&plms).copied().collect();
        if let Some(&t) = all.iter().find(|&&t| t < 0 || t >= t_train as i64) {
            return Err(Error::argument(
                "num_inference_steps",
                format!(
                    "the layout gives timestep {t}, outside [0, {t_train}); check steps_offset"
                ),
            ));
        }
        self.num_inference_steps = Some(n);
        self.num_prk_timesteps = prk.len();
        self.timesteps = common::to_f64(&all);
        self.timesteps_int = all;
        self.counter = 0;
        self.ets.clear();
        self.cur_sample = None;
        self.cur_model_output = None;
        self.index.reset();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    fn scale_model_input(&mut self, sample: &S, _timestep: f64) -> Result<S> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &S,
        timestep: f64,
        sample: &S,
        _noise: Option<&S>,
    ) -> Result<StepOutput<S>> {
        common::check_step_inputs(model_output, sample)?;
        let n = self
            .num_inference_steps
            .ok_or_else(|| Error::State("PNDMScheduler: call set_timesteps before step".into()))?;
        let t = common::train_index("timestep", timestep, self.config.num_train_timesteps)? as i64;
        self.index.current_lenient(&self.timesteps, timestep);
        let prev_sample = if self.counter < self.num_prk_timesteps && !self.config.skip_prk_steps {
            self.step_prk(model_output, t, sample, n)?
        } else {
            self.step_plms(model_output, t, sample, n)?
        };
        self.counter += 1;
        self.index.advance();
        // diffusers' PNDM returns no x̂₀.
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: None,
        })
    }

    fn add_noise(&self, original: &S, noise: &S, timesteps: &[f64]) -> Result<S> {
        common::add_noise_vp(&self.acp, original, noise, timesteps)
    }
    fn step_index(&self) -> Option<usize> {
        self.index.step_index()
    }
    fn begin_index(&self) -> Option<usize> {
        self.index.begin_index()
    }
    /// Stored for the pipeline's benefit only: as in diffusers, PNDM's PRK/PLMS stage is
    /// chosen by the number of steps taken since `set_timesteps`, not by this index.
    fn set_begin_index(&mut self, begin_index: usize) {
        self.index.set_begin_index(begin_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::HostTensor;

    fn host(shape: &[usize], f: impl Fn(usize) -> f64) -> HostTensor {
        let n: usize = shape.iter().product();
        HostTensor::new(shape.to_vec(), (0..n).map(f).collect()).unwrap()
    }

    fn sched(cfg: serde_json::Value) -> PndmScheduler<HostTensor> {
        PndmScheduler::from_config(crate::config::parse_config(&cfg).unwrap()).unwrap()
    }

    #[test]
    fn runs_match_diffusers() {
        for (cfg, steps, expected_ts, expected) in cases() {
            let mut s = sched(cfg.clone());
            s.set_timesteps(steps).unwrap();
            assert_eq!(s.timesteps(), expected_ts.as_slice(), "{cfg}");
            let mut x = host(&[1, 2, 2, 2], |i| -1.0 + 2.0 * i as f64 / 7.0);
            for t in expected_ts {
                let e = x.scale(0.5).add_scalar(0.1);
                x = s.step(&e, t, &x, None).unwrap().prev_sample;
            }
            for (p, q) in x.data().iter().zip(expected) {
                assert!((p - q).abs() < 1e-4 * q.abs().max(1.0), "{cfg}: {p} vs {q}");
            }
        }
    }

    fn cases() -> Vec<(serde_json::Value, usize, Vec<f64>, Vec<f64>)> {
        // diffusers 0.42.1 from x = linspace(-1, 1, 8), model output 0.5·x + 0.1.
        vec![
            (
                serde_json::json!({}),
                10,
                vec![
                    900.0, 850.0, 850.0, 800.0, 800.0, 750.0, 750.0, 700.0, 700.0, 650.0, 650.0,
                    600.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0, 0.0,
                ],
                vec![
                    -6.272224426269531,
                    -4.762451648712158,
                    -3.252678871154785,
                    -1.7429070472717285,
                    -0.233135387301445,
                    1.2766367197036743,
                    2.7864089012145996,
                    4.296180725097656,
                ],
            ),
            (
                serde_json::json!({"skip_prk_steps": true, "steps_offset": 1, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "set_alpha_to_one": false}),
                10,
                vec![
                    901.0, 801.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0,
                ],
                vec![
                    -2.399691581726074,
                    -1.8111960887908936,
                    -1.2227001190185547,
                    -0.6342042684555054,
                    -0.04570857807993889,
                    0.5427873134613037,
                    1.1312832832336426,
                    1.7197790145874023,
                ],
            ),
            (
                serde_json::json!({"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
                7,
                vec![
                    999.0, 927.0, 927.0, 856.0, 856.0, 784.0, 784.0, 713.0, 713.0, 641.0, 641.0,
                    570.0, 570.0, 428.0, 285.0, 142.0,
                ],
                vec![
                    -0.4458615183830261,
                    -0.34558168053627014,
                    -0.2453022301197052,
                    -0.145022451877594,
                    -0.04474281519651413,
                    0.05553693324327469,
                    0.15581655502319336,
                    0.25609609484672546,
                ],
            ),
            (
                serde_json::json!({"timestep_spacing": "linspace", "skip_prk_steps": true}),
                2,
                vec![999.0, 0.0, 0.0],
                vec![
                    19.98177146911621,
                    15.233061790466309,
                    10.484350204467773,
                    5.735638618469238,
                    0.9869282841682434,
                    -3.7617850303649902,
                    -8.510496139526367,
                    -13.259208679199219,
                ],
            ),
            (
                serde_json::json!({"timestep_spacing": "linspace"}),
                4,
                vec![
                    999.0, 791.0, 791.0, 666.0, 666.0, 458.0, 458.0, 333.0, 333.0, 125.0, 125.0,
                    0.0, 0.0,
                ],
                vec![
                    16.177570343017578,
                    12.344491958618164,
                    8.511430740356445,
                    4.678363800048828,
                    0.8452909588813782,
                    -2.9877779483795166,
                    -6.820842742919922,
                    -10.653914451599121,
                ],
            ),
        ]
    }

    #[test]
    fn errors() {
        let mut s = PndmScheduler::<HostTensor>::new();
        let x = host(&[1, 1, 2, 2], |i| i as f64 * 0.1);
        assert!(matches!(s.step(&x, 900.0, &x, None), Err(Error::State(_))));
        assert!(s.set_timesteps(0).is_err());
        assert!(s.set_timesteps(1001).is_err());
        assert!(s.set_timesteps(3).is_err());
        s.set_timesteps(10).unwrap();
        let nan = x.map(|v| if v > 0.15 { f64::NAN } else { v });
        assert!(matches!(
            s.step(&nan, 900.0, &x, None),
            Err(Error::NonFinite { .. })
        ));
        assert!(crate::config::parse_config::<PndmConfig>(
            &serde_json::json!({"prediction_type": "sample"})
        )
        .is_err());
        let mut k = sched(serde_json::json!({"skip_prk_steps": true}));
        k.set_timesteps(1).unwrap();
        assert_eq!(k.timesteps(), &[0.0]);
    }
}
