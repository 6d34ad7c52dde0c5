//! `--start-at`: several processes or machines begin a run at one wall-clock instant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far ahead a start may be: further is a typo, not a plan.
const MAX_AHEAD: Duration = Duration::from_secs(86_400);
/// How late a start may already be when the flag is read: a process started a moment after
/// the others still joins, one started much later would skew the merged result.
const MAX_LATE: Duration = Duration::from_secs(1);

/// Parses an RFC 3339 UTC time (`2026-12-03T14:00:00Z`, fractions allowed) or seconds since
/// the epoch (`1796306400`, `@1796306400.5`), and checks that it lies ahead.
pub fn parse(value: &str) -> Result<SystemTime, String> {
    parse_at(value, SystemTime::now())
}

fn parse_at(value: &str, now: SystemTime) -> Result<SystemTime, String> {
    let epoch = value.strip_prefix('@').unwrap_or(value);
    let at = match epoch.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => UNIX_EPOCH + Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("{value:?} is not a time")),
        Err(_) => humantime::parse_rfc3339_weak(value).map_err(|_| {
            format!("{value:?} is not a time: use 2026-12-03T14:00:00Z (UTC) or seconds since the epoch")
        })?,
    };
    if let Ok(late) = now.duration_since(at) {
        if late > MAX_LATE {
            return Err(format!(
                "{value:?} was {:.1} s ago: pick a time far enough ahead for every machine to \
                 start, and check that their clocks agree",
                late.as_secs_f64()
            ));
        }
    }
    if at.duration_since(now).is_ok_and(|ahead| ahead > MAX_AHEAD) {
        return Err(format!("{value:?} is more than a day ahead"));
    }
    Ok(at)
}

/// Sleeps until `at` by the wall clock (re-read each step: the clock may be slewed while
/// waiting).
pub fn wait_until(at: SystemTime) {
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(200)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_and_rfc3339_name_the_same_instant() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_306_000);
        let a = parse_at("1796306400", now).unwrap();
        let b = parse_at("@1796306400", now).unwrap();
        let c = parse_at("2026-12-03T14:00:00Z", now).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let half = parse_at("1796306400.5", now).unwrap();
        assert_eq!(half.duration_since(a).unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn the_past_far_future_and_nonsense_are_refused() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_306_400);
        assert!(
            parse_at("1796306399.5", now).is_ok(),
            "half a second late joins"
        );
        assert!(parse_at("1796306390", now).unwrap_err().contains("ago"));
        assert!(parse_at("1796506400", now).unwrap_err().contains("a day"));
        assert!(parse_at("tomorrow", now)
            .unwrap_err()
            .contains("not a time"));
        assert!(parse_at("-5", now).unwrap_err().contains("not a time"));
    }
}
