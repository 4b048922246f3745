//! The small checks each settings struct's `validate` is made of; each
//! error names the field as written in a config file (`pool.max_size`).

use std::time::Duration;

use super::error::ConfigError;

/// `value` is greater than zero.
pub(crate) fn positive(field: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(invalid(field, value, "must be greater than zero"));
    }
    Ok(())
}

/// A count is at least 1.
pub(crate) fn at_least_one(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::InvalidValue {
            field: field.to_owned(),
            value: "0".to_owned(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

/// A text holds more than white space.
pub(crate) fn non_empty(field: String, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::EmptyField { field });
    }
    Ok(())
}

/// A lower bound is not above its upper bound.
pub(crate) fn ordered(low: (&str, Duration), high: (&str, Duration)) -> Result<(), ConfigError> {
    if low.1 > high.1 {
        return Err(ConfigError::InvertedRange {
            low: low.0.to_owned(),
            low_value: low.1,
            high: high.0.to_owned(),
            high_value: high.1,
        });
    }
    Ok(())
}

/// A share between 0 and `max`, both included (never NaN); `reason` says
/// so in words.
pub(crate) fn share(
    field: &str,
    value: f64,
    max: f64,
    reason: &'static str,
) -> Result<(), ConfigError> {
    if !(0.0..=max).contains(&value) {
        return Err(ConfigError::InvalidValue {
            field: field.to_owned(),
            value: value.to_string(),
            reason,
        });
    }
    Ok(())
}

/// A duration out of range, shown as `Debug` shows it (`250ms`).
pub(crate) fn invalid(field: &str, value: Duration, reason: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        field: field.to_owned(),
        value: format!("{value:?}"),
        reason,
    }
}
