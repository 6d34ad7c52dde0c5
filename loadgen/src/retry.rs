//! How a reconnecting client waits between attempts (`reconnect`): a backoff, a jitter on
//! it, and whether a server's `Retry-After` overrides both. Parsed from the flags and
//! computed here, so the engine only asks "when next?".

use std::time::Duration;

/// The wait before attempt n + 1 after n failed ones, before jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backoff {
    /// `exponential:BASE..CAP`: BASE, 2·BASE, 4·BASE, … up to CAP.
    Exponential { base: Duration, cap: Duration },
    /// `fixed:D`: D every time.
    Fixed(Duration),
    /// `none`: at once.
    None,
}

/// How the wait is randomised, so that clients refused together do not return together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Uniform in [0, d] (AWS's "full jitter").
    Full,
    /// Uniform in [d/2, d].
    Equal,
    /// Uniform in [d·(1-f), d·(1+f)]: Socket.IO's `randomizationFactor` (0.5 by default).
    Spread(f64),
    /// d exactly.
    None,
}

/// A client's whole retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// One attempt (connect, TLS, response) gets this long before the client gives it up.
    pub attempt_timeout: Duration,
    pub backoff: Backoff,
    pub jitter: Jitter,
    /// Wait what a refusal's `Retry-After` says instead of the backoff.
    pub honour_retry_after: bool,
}

impl RetryPolicy {
    /// The wait after `failures` failed attempts (at least 1); `uniform` is a random number
    /// in [0, 1), `retry_after` the refusal's header, if any.
    pub fn wait(&self, failures: u32, uniform: f64, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after.filter(|_| self.honour_retry_after) {
            return wait;
        }
        let base = match self.backoff {
            Backoff::None => return Duration::ZERO,
            Backoff::Fixed(wait) => wait,
            Backoff::Exponential { base, cap } => {
                let doublings = failures.saturating_sub(1).min(30);
                base.saturating_mul(1 << doublings).min(cap)
            }
        };
        let uniform = uniform.clamp(0.0, 1.0);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => base.mul_f64(uniform),
            Jitter::Equal => base.mul_f64(0.5 + uniform / 2.0),
            Jitter::Spread(f) => base.mul_f64((1.0 - f + 2.0 * f * uniform).max(0.0)),
        }
    }
}

/// `--backoff exponential:BASE..CAP|fixed:D|none`.
pub fn parse_backoff(value: &str) -> Result<Backoff, String> {
    let duration = |text: &str| wsedge::values::duration(text.trim());
    if value == "none" {
        return Ok(Backoff::None);
    }
    if let Some(wait) = value.strip_prefix("fixed:") {
        return Ok(Backoff::Fixed(duration(wait)?));
    }
    if let Some(range) = value.strip_prefix("exponential:") {
        let (base, cap) = range.split_once("..").ok_or_else(|| {
            format!("{value:?}: write exponential:BASE..CAP, e.g. exponential:250ms..10s")
        })?;
        let (base, cap) = (duration(base)?, duration(cap)?);
        if base.is_zero() || cap < base {
            return Err(format!(
                "{value:?}: BASE must be above zero and CAP at least BASE"
            ));
        }
        return Ok(Backoff::Exponential { base, cap });
    }
    Err(format!(
        "{value:?} is not a backoff: exponential:BASE..CAP, fixed:D or none"
    ))
}

/// `--jitter full|equal|none|spread:F` (F in (0, 1]).
pub fn parse_jitter(value: &str) -> Result<Jitter, String> {
    match value {
        "full" => Ok(Jitter::Full),
        "equal" => Ok(Jitter::Equal),
        "none" => Ok(Jitter::None),
        _ => match value.strip_prefix("spread:").map(str::parse::<f64>) {
            Some(Ok(f)) if f > 0.0 && f <= 1.0 => Ok(Jitter::Spread(f)),
            _ => Err(format!(
                "{value:?} is not a jitter: full, equal, none or spread:F with F in (0, 1] \
                 (spread:0.5 is Socket.IO's)"
            )),
        },
    }
}

/// The seconds of a refusal's `Retry-After` (the delay form; an HTTP date counts as absent).
pub fn retry_after(response: &[u8]) -> Option<Duration> {
    let head = response.split(|&b| b == b'\n').skip(1);
    for line in head {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(b"retry-after") {
            let value = std::str::from_utf8(&line[colon + 1..]).ok()?.trim();
            return value.parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: &str, jitter: &str) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(5),
            backoff: parse_backoff(backoff).unwrap(),
            jitter: parse_jitter(jitter).unwrap(),
            honour_retry_after: true,
        }
    }

    #[test]
    fn exponential_backoff_doubles_up_to_its_cap() {
        let p = policy("exponential:250ms..10s", "none");
        let waits: Vec<u128> = (1..=8).map(|n| p.wait(n, 0.3, None).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(p.wait(u32::MAX, 0.3, None), Duration::from_secs(10));
    }

    #[test]
    fn jitters_stay_in_their_ranges() {
        let d = 1000.0;
        for (jitter, low, high) in [
            ("full", 0.0, d),
            ("equal", d / 2.0, d),
            ("spread:0.5", d / 2.0, 1.5 * d),
            ("none", d, d),
        ] {
            let p = policy("fixed:1s", jitter);
            for u in [0.0, 0.25, 0.5, 0.999] {
                let ms = p.wait(3, u, None).as_secs_f64() * 1e3;
                assert!(ms >= low - 1e-6 && ms <= high + 1e-6, "{jitter} {u}: {ms}");
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_only_when_asked() {
        let mut p = policy("none", "none");
        let refusal =
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nretry-after: 7\r\n\r\n";
        let header = retry_after(refusal);
        assert_eq!(header, Some(Duration::from_secs(7)));
        assert_eq!(p.wait(1, 0.5, header), Duration::from_secs(7));
        p.honour_retry_after = false;
        assert_eq!(p.wait(1, 0.5, header), Duration::ZERO);
        assert_eq!(
            retry_after(b"HTTP/1.1 503 X\r\n\r\nRetry-After: 9\r\n"),
            None
        );
        assert_eq!(
            retry_after(b"HTTP/1.1 503 X\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"),
            None
        );
    }

    #[test]
    fn bad_specs_say_what_is_expected() {
        assert!(parse_backoff("exponential:10s..1s").is_err());
        assert!(parse_backoff("exponential:1s")
            .unwrap_err()
            .contains("BASE..CAP"));
        assert!(parse_backoff("linear:1s").unwrap_err().contains("fixed:D"));
        assert!(parse_jitter("spread:2").unwrap_err().contains("Socket.IO"));
        assert!(parse_jitter("half").is_err());
    }
}
