//! An [OpenFeature](https://openfeature.dev) provider (`open-feature` 0.3) backed by
//! substation's switches (feature `openfeature`).
//!
//! The flag key is the switch's name and the targeting key is the bucketing key, so an
//! evaluation through the SDK gives the same answer as [`Switch::is_on`] /
//! [`Switch::with_variant`] for that key — and as flagd for a flag of the same name.
//!
//! ```
//! use open_feature::{EvaluationContext, EvaluationReason, OpenFeature};
//! use substation::{Substation, switch::{SwitchSettings, openfeature::SubstationProvider}};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let substation = Substation::builder()
//!     .switch("new-checkout", SwitchSettings::percent(100.0))
//!     .build()
//!     .unwrap();
//! let mut api = OpenFeature::singleton_mut().await;
//! api.set_provider(SubstationProvider::new(&substation)).await;
//! let client = api.create_client();
//! let ctx = EvaluationContext::default().with_targeting_key("user-42");
//! let details = client.get_bool_details("new-checkout", Some(&ctx), None).await.unwrap();
//! assert!(details.value);
//! assert_eq!(details.reason, Some(EvaluationReason::Static));
//! assert_eq!(details.variant.as_deref(), Some("on"));
//! # }
//! ```
//!
//! | substation | OpenFeature |
//! |---|---|
//! | a percentage switch | boolean flag, variants `on` (`true`) / `off` (`false`) |
//! | a variant switch | flag of its variants' values: boolean, string, integer, float or structured |
//! | bucketed by the targeting key | reason `SPLIT` |
//! | one answer for every key (0 %, 100 %, `"on": true`, one weighted variant) | `STATIC` |
//! | `"on": false` | `DISABLED` (the off / first variant) |
//! | a split switch and no targeting key | `DEFAULT` (the off / first variant) |
//! | no code default and no stored value | error `FLAG_NOT_FOUND` (the caller's default, reason `ERROR`) |
//! | a variant whose value is not of the asked type | error `TYPE_MISMATCH` |
//!
//! A switch that was rejected keeps its last good value, like every setting; evaluation
//! itself never fails for a known switch.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationReason, EvaluationResult,
    FlagMetadata, StructValue, Value,
};
use serde_json::Value as Json;

use super::{Reason, Resolution, Switch};
use crate::Substation;

/// A [`FeatureProvider`] serving the switches of a [`Substation`]; see the
/// [module docs](self).
#[derive(Debug)]
pub struct SubstationProvider {
    substation: Substation,
    metadata: ProviderMetadata,
    /// Handles, made once per flag key (the registry's `switch` takes its writer lock).
    switches: RwLock<HashMap<String, Switch>>,
}

impl SubstationProvider {
    /// A provider of `substation`'s switches.
    pub fn new(substation: &Substation) -> Self {
        SubstationProvider {
            substation: substation.clone(),
            metadata: ProviderMetadata::new("substation"),
            switches: RwLock::new(HashMap::new()),
        }
    }

    fn resolve(&self, flag_key: &str, ctx: &EvaluationContext) -> EvaluationResult<Resolution> {
        let switch = self.switch(flag_key)?;
        Ok(switch.resolve(ctx.targeting_key.as_deref().map(str::as_bytes)))
    }

    fn switch(&self, flag_key: &str) -> EvaluationResult<Switch> {
        if let Some(s) = self
            .switches
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(flag_key)
        {
            return Ok(s.clone());
        }
        if self.substation.snapshot().switch(flag_key).is_none() {
            return Err(EvaluationError::builder()
                .code(EvaluationErrorCode::FlagNotFound)
                .message(format!(
                    "no switch `{flag_key}`: it has no code default and no stored value"
                ))
                .build());
        }
        let switch = self.substation.switch(flag_key);
        self.switches
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(flag_key.to_owned(), switch.clone());
        Ok(switch)
    }

    fn details<T>(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
        convert: impl FnOnce(&Json) -> Option<T>,
        kind: &str,
    ) -> EvaluationResult<ResolutionDetails<T>> {
        let r = self.resolve(flag_key, ctx)?;
        let value = convert(r.variant.value()).ok_or_else(|| {
            EvaluationError::builder()
                .code(EvaluationErrorCode::TypeMismatch)
                .message(format!(
                    "switch `{flag_key}`: variant `{}` is `{}`, not {kind}",
                    r.variant.name(),
                    r.variant.value()
                ))
                .build()
        })?;
        Ok(ResolutionDetails {
            value,
            variant: Some(r.variant.name().to_owned()),
            reason: Some(reason(r.reason)),
            flag_metadata: Some(FlagMetadata::default().with_value("algorithm", "fractional_v2")),
        })
    }
}

fn reason(r: Reason) -> EvaluationReason {
    match r {
        Reason::Static => EvaluationReason::Static,
        Reason::Split => EvaluationReason::Split,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Default => EvaluationReason::Default,
    }
}

/// A JSON value as an OpenFeature value (`null` has no counterpart).
fn to_value(json: &Json) -> Option<Value> {
    Some(match json {
        Json::Null => return None,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64()?),
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().filter_map(to_value).collect()),
        Json::Object(o) => Value::Struct(to_struct(o)),
    })
}

fn to_struct(o: &serde_json::Map<String, Json>) -> StructValue {
    StructValue {
        fields: o
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), to_value(v)?)))
            .collect(),
    }
}

#[open_feature::async_trait]
impl FeatureProvider for SubstationProvider {
    fn status(&self) -> ProviderStatus {
        ProviderStatus::Ready
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        self.details(flag_key, ctx, Json::as_bool, "a boolean")
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        self.details(flag_key, ctx, Json::as_i64, "an integer")
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        self.details(flag_key, ctx, Json::as_f64, "a number")
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        self.details(flag_key, ctx, |v| v.as_str().map(str::to_owned), "a string")
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        self.details(flag_key, ctx, |v| v.as_object().map(to_struct), "an object")
    }
}
