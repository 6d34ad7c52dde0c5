//! Flag values both binaries read (`wsedge` and `wsedge-loadgen`): one parser each, so that
//! a duration, a header or a TLS group is written the same way, with the same units and the
//! same error text, whichever tool is given it.

use std::time::Duration;

use crate::tls::TlsGroup;

/// A duration: a number with `us`, `ms`, `s` or `m` (a bare number is seconds), positive.
pub fn duration(value: &str) -> Result<Duration, String> {
    let (number, unit) = value
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((value, "s"), |i| value.split_at(i));
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 500ms, 10s or 2m"))?;
    let secs = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {value:?}: use us, ms, s or m"
            ))
        }
    };
    if !(secs > 0.0 && secs < 1e7) {
        return Err(format!("{value:?}: a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration that may be zero (`0`, `0s`), as where nothing at all is meant.
pub fn duration_or_zero(value: &str) -> Result<Duration, String> {
    match value
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .trim()
        .parse::<f64>()
    {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => duration(value),
    }
}

/// A duration of at most `max` (see [`duration`]).
pub fn duration_up_to(value: &str, max: Duration) -> Result<Duration, String> {
    let parsed = duration(value)?;
    match parsed <= max {
        true => Ok(parsed),
        false => Err(format!("{value:?}: at most {max:?}")),
    }
}

/// A request header line, `Name: value`: the name a token, no line breaks.
pub fn header_line(value: &str) -> Result<String, String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    match value.split_once(':') {
        Some((name, _))
            if !name.is_empty() && name.bytes().all(token) && !value.contains(['\r', '\n']) =>
        {
            Ok(value.to_owned())
        }
        _ => Err(format!("{value:?}: a header is 'Name: value'")),
    }
}

/// A key-exchange group by name, in any case: every name [`TlsGroup::NAMES`] has.
pub fn tls_group(value: &str) -> Result<TlsGroup, String> {
    let name = value.trim();
    TlsGroup::NAMES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|&(_, group)| group)
        .ok_or_else(|| {
            let names: Vec<&str> = TlsGroup::NAMES.iter().map(|n| n.0).collect();
            format!("unknown group {value:?} (known: {})", names.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_every_unit_and_refuse_the_rest() {
        assert_eq!(duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1.5m"), Ok(Duration::from_secs(90)));
        for bad in ["", "0", "-1s", "5h", "fast", "nan"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert!(duration_up_to("2h", Duration::from_secs(3600)).is_err());
        assert!(duration_up_to("59m", Duration::from_secs(3600)).is_ok());
        assert_eq!(duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("3s"), Ok(Duration::from_secs(3)));
        assert!(duration_or_zero("-1s").is_err());
    }

    #[test]
    fn headers_need_a_token_name_and_one_line() {
        assert!(header_line("X-Id: 7").is_ok());
        for bad in ["no colon", ": empty", "Bad Name: x", "X: a\r\nY: b"] {
            assert!(header_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_group_name_is_known_and_named_in_the_error() {
        for (name, group) in TlsGroup::NAMES {
            assert_eq!(tls_group(&name.to_ascii_uppercase()), Ok(group));
        }
        let error = tls_group("x448").unwrap_err();
        assert!(
            TlsGroup::NAMES.iter().all(|(name, _)| error.contains(name)),
            "{error}"
        );
    }
}
