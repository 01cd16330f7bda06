//! A chaos experiment's settings (key `experiments/<name>`) and its result (key
//! `experiments/<name>/result`, written by the library).

use serde::{Deserialize, Serialize};

use super::decode::{self, Settings};
use super::error::{SettingsError, range_f64, range_u64};

/// One chaos experiment on real traffic: a control and an experiment cohort, the same
/// size, chosen by sticky key; the experiment cohort's calls to `policy` fail (abort)
/// or slow down (delay); the experiment stops itself when the experiment cohort's
/// success rate falls more than `max_drop_points` below the control's. Key
/// `experiments/<name>`; see [`experiment`](crate::experiment).
///
/// ```
/// use substation::settings::ExperimentSettings;
///
/// let e = ExperimentSettings::from_json(br#"{"policy": "inventory", "control_percent": 2, "experiment_percent": 2}"#).unwrap();
/// assert_eq!(e.abort_percent, 100.0); // the whole experiment cohort, by default
/// let err = ExperimentSettings::from_json(br#"{"policy": "inventory", "control_percent": 60}"#).unwrap_err();
/// assert_eq!(err.to_string(), "control_percent: 60 is not in 0.0001..=50");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ExperimentSettings {
    /// The policy (dependency) whose calls fail for the experiment cohort: a
    /// [`FaultLayer`](crate::fault::FaultLayer) of that policy injects. Required in the
    /// effective value (one layer may leave it to another: values merge field by field,
    /// so the JSON Schema of one stored value does not require it).
    pub policy: String,
    /// Percentage of the experiment cohort's calls to `policy` that fail at once
    /// (`0..=100`, default 100).
    pub abort_percent: f64,
    /// Percentage of the experiment cohort's calls to `policy` that are delayed
    /// (`0..=100`, default 0), decided independently of the abort.
    pub delay_percent: f64,
    /// The delay, `0..=3_600_000` ms (default 0).
    pub delay_ms: u64,
    /// Share of keys in the control cohort (`0.0001..=50` percent, default 1).
    pub control_percent: f64,
    /// Share of keys in the experiment cohort (`0.0001..=50` percent, default 1).
    pub experiment_percent: f64,
    /// The KPI bound: how many percentage points the experiment cohort's success rate
    /// may fall below the control's (`0..=100`, default 5).
    pub max_drop_points: f64,
    /// Requests each cohort needs before it is judged (`1..=1_000_000_000`, default 100).
    pub min_requests: u64,
    /// The longest the experiment runs, from its start (`1_000..=86_400_000` ms,
    /// default 600,000: ten minutes); then it stops with the verdict "passed".
    pub max_duration_ms: u64,
    /// A process that has lost its store for this long stops injecting until it is
    /// back (`0..=600_000` ms, default 10,000).
    pub offline_stop_ms: u64,
}

impl Default for ExperimentSettings {
    fn default() -> Self {
        ExperimentSettings {
            policy: String::new(),
            abort_percent: 100.0,
            delay_percent: 0.0,
            delay_ms: 0,
            control_percent: 1.0,
            experiment_percent: 1.0,
            max_drop_points: 5.0,
            min_requests: 100,
            max_duration_ms: 600_000,
            offline_stop_ms: 10_000,
        }
    }
}

impl ExperimentSettings {
    /// An experiment failing every call of the experiment cohort to `policy`, with the
    /// other fields at their defaults.
    pub fn new(policy: &str) -> Self {
        ExperimentSettings {
            policy: policy.to_owned(),
            ..Default::default()
        }
    }

    /// These settings changed by `f` (see [`PolicySettings::with`](super::PolicySettings::with)).
    #[must_use]
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// Parses, decodes strictly and validates JSON bytes.
    pub fn from_json(json: &[u8]) -> Result<Self, SettingsError> {
        decode::from_json(json)
    }
}

impl Settings for ExperimentSettings {
    fn check(&self) -> Result<(), SettingsError> {
        if !crate::live::valid_name(&self.policy) {
            return Err(SettingsError::new(
                "policy",
                if self.policy.is_empty() {
                    "required: the policy whose calls fail".to_owned()
                } else {
                    format!(
                        "{} is not a valid name (1 to 128 of A-Z a-z 0-9 _ . -)",
                        super::Bounded::key(&self.policy)
                    )
                },
            ));
        }
        range_f64("abort_percent", self.abort_percent, 0.0, 100.0, "0..=100")?;
        range_f64("delay_percent", self.delay_percent, 0.0, 100.0, "0..=100")?;
        range_u64("delay_ms", self.delay_ms, 0, 3_600_000)?;
        range_f64(
            "control_percent",
            self.control_percent,
            0.0001,
            50.0,
            "0.0001..=50",
        )?;
        range_f64(
            "experiment_percent",
            self.experiment_percent,
            0.0001,
            50.0,
            "0.0001..=50",
        )?;
        range_f64(
            "max_drop_points",
            self.max_drop_points,
            0.0,
            100.0,
            "0..=100",
        )?;
        range_u64("min_requests", self.min_requests, 1, 1_000_000_000)?;
        range_u64("max_duration_ms", self.max_duration_ms, 1_000, 86_400_000)?;
        range_u64("offline_stop_ms", self.offline_stop_ms, 0, 600_000)?;
        Ok(())
    }
}

/// Where an experiment run stands (`running`, `passed`, `aborted`, `halted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunState {
    /// Injecting into the experiment cohort.
    Running,
    /// Ran its full duration within the KPI bound.
    Passed,
    /// Stopped because the experiment cohort's KPI fell below the bound.
    Aborted,
    /// Stopped by the operator (`global.halt_experiments`).
    Halted,
}

impl RunState {
    /// `running`, `passed`, `aborted` or `halted`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Passed => "passed",
            RunState::Aborted => "aborted",
            RunState::Halted => "halted",
        }
    }

    /// Whether this is a verdict (the run is over).
    pub fn is_final(self) -> bool {
        self != RunState::Running
    }
}

/// One cohort's requests and successes, as the process that wrote a result counted
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CohortCounts {
    /// Requests of the cohort that finished.
    pub requests: u64,
    /// Those the edge's classifier called a success.
    pub successes: u64,
}

impl CohortCounts {
    /// The success rate in percent (100 with no requests).
    pub fn success_percent(&self) -> f64 {
        if self.requests == 0 {
            100.0
        } else {
            self.successes as f64 * 100.0 / self.requests as f64
        }
    }
}

/// An experiment run's record, key `experiments/<name>/result`, written by the library
/// with compare-and-swap: `running` by the first process to start the run, then once
/// the verdict. A verdict is final for its run (`run`: a hash of the experiment's
/// value): to run the same value again, delete the result; a changed value is a new run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ExperimentResult {
    /// The run: 16 hex digits, a hash of the experiment's effective value.
    pub run: String,
    /// Where the run stands.
    pub state: RunState,
    /// When it started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it stopped (ms since the Unix epoch), once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_ms: Option<u64>,
    /// Why it stopped, in words (`experiment success 61.0 % vs control 99.8 %: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The control cohort, as counted by the process that wrote the verdict.
    #[serde(default)]
    pub control: CohortCounts,
    /// The experiment cohort, as counted by the process that wrote the verdict.
    #[serde(default)]
    pub experiment: CohortCounts,
    /// Control's success rate minus the experiment's, in percentage points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviation_points: Option<f64>,
    /// The process that wrote the record (its presence id, or host and pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Settings for ExperimentResult {
    fn check(&self) -> Result<(), SettingsError> {
        if self.run.len() != 16 || !self.run.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SettingsError::new("run", "expected 16 hex digits"));
        }
        for (field, c) in [("control", &self.control), ("experiment", &self.experiment)] {
            if c.successes > c.requests {
                return Err(SettingsError::new(
                    format!("{field}.successes"),
                    format!("{} is more than requests ({})", c.successes, c.requests),
                ));
            }
        }
        if let Some(d) = self.deviation_points {
            range_f64("deviation_points", d, -100.0, 100.0, "-100..=100")?;
        }
        if self.reason.as_ref().is_some_and(|r| r.len() > 1024) {
            return Err(SettingsError::new("reason", "longer than 1024 bytes"));
        }
        if self.by.as_ref().is_some_and(|r| r.len() > 256) {
            return Err(SettingsError::new("by", "longer than 256 bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        ExperimentSettings::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn experiment_settings_are_validated() {
        for (json, want) in [
            ("{}", "policy: required: the policy whose calls fail"),
            (
                r#"{"policy":"a b"}"#,
                r#"policy: "a b" is not a valid name"#,
            ),
            (
                r#"{"policy":"p","abort_percent":101}"#,
                "abort_percent: 101 is not in 0..=100",
            ),
            (
                r#"{"policy":"p","control_percent":0}"#,
                "control_percent: 0 is not in 0.0001..=50",
            ),
            (
                r#"{"policy":"p","min_requests":0}"#,
                "min_requests: 0 is not in 1..=1000000000",
            ),
            (
                r#"{"policy":"p","max_duration_ms":10}"#,
                "max_duration_ms: 10 is not in 1000..=86400000",
            ),
            (r#"{"policy":"p","cohort":1}"#, "unknown field `cohort`"),
        ] {
            let got = err(json);
            assert!(got.contains(want), "{json}: {got}");
        }
        let ok = ExperimentSettings::from_json(
            br#"{"policy":"p","abort_percent":0,"delay_percent":100,"delay_ms":200,"control_percent":0.5,"experiment_percent":0.5,"max_drop_points":2,"min_requests":50,"max_duration_ms":60000,"offline_stop_ms":0}"#,
        )
        .unwrap();
        assert_eq!(ok.delay_ms, 200);
    }

    #[test]
    fn results_are_validated() {
        let good = r#"{"run":"00112233aabbccdd","state":"aborted","started_ms":1,"stopped_ms":2,"reason":"r","control":{"requests":10,"successes":10},"experiment":{"requests":10,"successes":5},"deviation_points":50}"#;
        let r: ExperimentResult = decode::from_json(good.as_bytes()).unwrap();
        assert_eq!(r.state, RunState::Aborted);
        assert_eq!(r.experiment.success_percent(), 50.0);
        for (json, want) in [
            (
                r#"{"run":"x","state":"running","started_ms":1}"#,
                "run: expected 16 hex digits",
            ),
            (
                r#"{"run":"00112233aabbccdd","state":"done","started_ms":1}"#,
                "unknown variant `done`",
            ),
            (
                r#"{"run":"00112233aabbccdd","state":"running","started_ms":1,"control":{"requests":1,"successes":2}}"#,
                "control.successes: 2 is more than requests (1)",
            ),
        ] {
            let got = decode::from_json::<ExperimentResult>(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(got.contains(want), "{json}: {got}");
        }
    }
}
