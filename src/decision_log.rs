//! The decision log: one line per Check.
//!
//! The line has the same layout as certbound's other log lines (tracing-subscriber's text or
//! JSON format), but once [`install`]ed it is formatted here and handed straight to the log
//! writer. Going through tracing's field visitors and `core::fmt` cost about 18,000 instructions
//! per check, more than the rest of a cached decision (callgrind, BENCHMARKS.md); this costs a
//! fraction of that. `RUST_LOG` still decides whether the line is written (target
//! `certbound::decision`, level INFO). Without [`install`] (a library user, an interactive
//! terminal with colours) the line goes through `tracing` as any other event.
//!
//! Every value is escaped: most come from the request or the token, and a newline or a terminal
//! control character must not forge or hide log lines.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// The fields of one decision line. `None` fields are left out, as tracing does.
#[derive(Debug, Default)]
pub struct Line<'a> {
    pub decision: &'static str,
    pub reason: &'static str,
    pub rule: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub kid: Option<&'a str>,
    pub alg: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub x5t: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    /// A deny's near-miss: the token's value beside the configured ones
    /// ([`certbound_core::Policy::deny_detail`], bounded).
    pub detail: Option<&'a str>,
    pub latency_us: u64,
}

type Write = Box<dyn Fn(&[u8]) + Send + Sync>;

static SINK: OnceLock<(LogFormat, Write)> = OnceLock::new();

/// Sends decision lines, formatted as `format`, to `write` (one call per line, newline included).
/// The first call wins.
pub fn install(format: LogFormat, write: impl Fn(&[u8]) + Send + Sync + 'static) {
    let _ = SINK.set((format, Box::new(write)));
}

/// Whether decision lines are written (`RUST_LOG` lets `certbound::decision` INFO through):
/// work done only for the line (a deny's detail) can be skipped otherwise.
pub fn enabled() -> bool {
    tracing::enabled!(target: "certbound::decision", tracing::Level::INFO)
}

/// Logs one decision, if `RUST_LOG` lets `certbound::decision` INFO through.
pub fn log(line: &Line<'_>) {
    if !enabled() {
        return;
    }
    let Some((format, write)) = SINK.get() else {
        return log_with_tracing(line);
    };
    thread_local! {
        static BUFFER: RefCell<String> = RefCell::new(String::with_capacity(512));
    }
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        format_line(buffer, *format, SystemTime::now(), line);
        write(buffer.as_bytes());
    });
}

fn log_with_tracing(line: &Line<'_>) {
    tracing::info!(
        target: "certbound::decision",
        decision = line.decision,
        reason = line.reason,
        rule = line.rule,
        issuer = line.issuer,
        kid = line.kid,
        alg = line.alg,
        sub = line.sub,
        client_id = line.client_id,
        x5t = line.x5t,
        request_id = line.request_id,
        traceparent = line.traceparent,
        method = line.method,
        path = line.path,
        detail = line.detail,
        latency_us = line.latency_us,
        "check"
    );
}

/// Appends the line, newline included, to `out`.
pub fn format_line(out: &mut String, format: LogFormat, now: SystemTime, line: &Line<'_>) {
    let strings = [
        ("decision", Some(line.decision)),
        ("reason", Some(line.reason)),
        ("rule", line.rule),
        ("issuer", line.issuer),
        ("kid", line.kid),
        ("alg", line.alg),
        ("sub", line.sub),
        ("client_id", line.client_id),
        ("x5t", line.x5t),
        ("request_id", line.request_id),
        ("traceparent", line.traceparent),
        ("method", line.method),
        ("path", line.path),
        ("detail", line.detail),
    ];
    let fields = strings
        .iter()
        .filter_map(|(name, value)| Some((*name, (*value)?)));
    match format {
        // 2026-11-29T04:57:37.880245Z  INFO certbound::decision: check decision="allow" ... latency_us=416
        LogFormat::Text => {
            push_timestamp(out, now);
            out.push_str("  INFO certbound::decision: check");
            for (name, value) in fields {
                out.push(' ');
                out.push_str(name);
                out.push_str("=\"");
                push_bounded(out, value);
                out.push('"');
            }
            out.push_str(" latency_us=");
            push_number(out, line.latency_us);
        }
        // {"timestamp":"…","level":"INFO","message":"check","decision":"allow",…,"latency_us":416,"target":"certbound::decision"}
        LogFormat::Json => {
            out.push_str("{\"timestamp\":\"");
            push_timestamp(out, now);
            out.push_str("\",\"level\":\"INFO\",\"message\":\"check\"");
            for (name, value) in fields {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":\"");
                push_bounded(out, value);
                out.push('"');
            }
            out.push_str(",\"latency_us\":");
            push_number(out, line.latency_us);
            out.push_str(",\"target\":\"certbound::decision\"}");
        }
    }
    out.push('\n');
}

/// Bytes of one value written before it is cut (a path, a claim: the line stays bounded).
pub const MAX_VALUE_BYTES: usize = 1024;

/// [`push_escaped`] of at most [`MAX_VALUE_BYTES`] of `value`, `…` marking a cut.
fn push_bounded(out: &mut String, value: &str) {
    if value.len() <= MAX_VALUE_BYTES {
        return push_escaped(out, value);
    }
    let mut at = MAX_VALUE_BYTES;
    while !value.is_char_boundary(at) {
        at -= 1;
    }
    push_escaped(out, &value[..at]);
    out.push('…');
}

/// JSON string escaping (also used inside the text format's quotes), plus the characters that
/// can hide or reorder text on a terminal: C1 controls, DEL, line/paragraph separators and bidi
/// controls come out as `\uXXXX`. Everything else, non-ASCII included, is copied.
fn push_escaped(out: &mut String, value: &str) {
    let needs_escape = |c: char| {
        matches!(c, '\0'..='\x1f' | '"' | '\\' | '\x7f'..='\u{9f}' | '\u{2028}' | '\u{2029}')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    let mut rest = value;
    // Fast path: runs of plain ASCII are copied whole.
    while let Some(at) = rest
        .bytes()
        .position(|b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
    {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().expect("at is a char boundary");
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let code = c as u32;
                out.push_str("\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(char::from(HEX[(code >> shift) as usize & 0xf]));
                }
            }
            c => out.push(c),
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
}

fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits"));
}

/// `n` as exactly `width` digits (zero-padded; `n` must fit).
fn push_digits(out: &mut String, n: u64, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (n / 10u64.pow(place) % 10) as u8));
    }
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber writes it:
/// `2026-11-29T04:57:37.880245Z`.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    push_digits(out, year.max(0) as u64, 4);
    out.push('-');
    push_digits(out, month.into(), 2);
    out.push('-');
    push_digits(out, day.into(), 2);
    out.push('T');
    push_digits(out, of_day / 3600, 2);
    out.push(':');
    push_digits(out, of_day / 60 % 60, 2);
    out.push(':');
    push_digits(out, of_day % 60, 2);
    out.push('.');
    push_digits(out, since_epoch.subsec_micros().into(), 6);
    out.push('Z');
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros.into())
    }

    fn timestamp(seconds: u64, micros: u32) -> String {
        let mut out = String::new();
        push_timestamp(&mut out, at(seconds, micros));
        out
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        // Reference values from Python's datetime.fromtimestamp(s, timezone.utc).
        assert_eq!(timestamp(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(
            timestamp(1_709_251_199, 999_999),
            "2024-02-29T23:59:59.999999Z"
        );
        assert_eq!(
            timestamp(1_795_927_057, 880_245),
            "2026-11-29T04:37:37.880245Z"
        );
        assert_eq!(timestamp(4_102_444_800, 0), "2100-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
    }

    #[test]
    fn days_round_trip_through_the_calendar() {
        // Every day from 1970 to 2400: consecutive, and months and years roll over correctly.
        let mut previous = civil_from_days(0);
        assert_eq!(previous, (1970, 1, 1));
        for days in 1..157_000 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = previous;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = (y, m, d) == (py, pm + 1, 1) && pd >= 28;
            let next_year = (y, m, d) == (py + 1, 1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{previous:?} -> {y}-{m}-{d}"
            );
            let leap = py % 4 == 0 && (py % 100 != 0 || py % 400 == 0);
            if next_month || next_year {
                let length = match pm {
                    2 if leap => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                assert_eq!(pd, length, "{py}-{pm} has {length} days");
            }
            previous = (y, m, d);
        }
    }

    fn line() -> Line<'static> {
        Line {
            decision: "allow",
            reason: "ok",
            rule: Some("default"),
            issuer: Some("https://idp.example.com"),
            kid: Some("demo-2026"),
            alg: None,
            sub: Some("demo-user"),
            client_id: Some("demo-client"),
            x5t: Some("b69mXQ4cCytUnvrDNnp5QmW1nKM-62Tk6AFNvRyoR1g"),
            request_id: Some("demo-1"),
            traceparent: None,
            method: Some("GET"),
            path: Some("/items"),
            detail: None,
            latency_us: 416,
        }
    }

    fn formatted(format: LogFormat, line: &Line<'_>) -> String {
        let mut out = String::new();
        format_line(&mut out, format, at(1_795_927_057, 880_245), line);
        out
    }

    #[test]
    fn text_lines_look_like_tracing_subscribers() {
        // The layout of a line certbound wrote through tracing-subscriber (timestamp aside).
        assert_eq!(
            formatted(LogFormat::Text, &line()),
            "2026-11-29T04:37:37.880245Z  INFO certbound::decision: check decision=\"allow\" \
             reason=\"ok\" rule=\"default\" issuer=\"https://idp.example.com\" kid=\"demo-2026\" \
             sub=\"demo-user\" client_id=\"demo-client\" \
             x5t=\"b69mXQ4cCytUnvrDNnp5QmW1nKM-62Tk6AFNvRyoR1g\" request_id=\"demo-1\" \
             method=\"GET\" path=\"/items\" latency_us=416\n"
        );
    }

    #[test]
    fn json_lines_look_like_tracing_subscribers() {
        assert_eq!(
            formatted(LogFormat::Json, &line()),
            "{\"timestamp\":\"2026-11-29T04:37:37.880245Z\",\"level\":\"INFO\",\"message\":\"check\",\
             \"decision\":\"allow\",\"reason\":\"ok\",\"rule\":\"default\",\
             \"issuer\":\"https://idp.example.com\",\"kid\":\"demo-2026\",\"sub\":\"demo-user\",\
             \"client_id\":\"demo-client\",\"x5t\":\"b69mXQ4cCytUnvrDNnp5QmW1nKM-62Tk6AFNvRyoR1g\",\
             \"request_id\":\"demo-1\",\"method\":\"GET\",\"path\":\"/items\",\"latency_us\":416,\
             \"target\":\"certbound::decision\"}\n"
        );
    }

    const HOSTILE: &[&str] = &[
        "line\nINFO certbound::decision: check decision=\"allow\"",
        "quote\" and \\ backslash",
        "\r\t\0\x1b[31mred\x1b[0m",
        "del\x7f c1\u{85}\u{9b}",
        "sep\u{2028}\u{2029} bidi\u{202e}\u{2066}",
        "ünïcödé 漢字 🙂 stays",
        "",
    ];

    #[test]
    fn hostile_values_stay_on_one_line_and_round_trip_through_json() {
        for value in HOSTILE {
            let line = Line {
                sub: Some(value),
                path: Some(value),
                ..line()
            };
            for format in [LogFormat::Text, LogFormat::Json] {
                let out = formatted(format, &line);
                assert_eq!(out.matches('\n').count(), 1, "{out:?}");
                assert!(out.ends_with('\n'));
                assert!(
                    !out.chars().any(|c| c.is_control() && c != '\n'
                        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}' | '\u{2066}')),
                    "{out:?}"
                );
            }
            let json: serde_json::Value =
                serde_json::from_str(&formatted(LogFormat::Json, &line)).expect("valid JSON");
            assert_eq!(json["sub"], *value);
            assert_eq!(json["path"], *value);
            assert_eq!(json["latency_us"], 416);
        }
    }

    #[test]
    fn text_values_read_back_as_json_strings() {
        // Inside the text format's quotes the escaping is JSON's, so a log pipeline can unquote
        // a value with any JSON parser.
        for value in HOSTILE {
            let out = formatted(
                LogFormat::Text,
                &Line {
                    sub: Some(value),
                    ..line()
                },
            );
            let start = out.find(" sub=").expect("sub field") + " sub=".len();
            let end = out.find(" client_id=").expect("client_id field");
            let back: String = serde_json::from_str(&out[start..end]).expect("a JSON string");
            assert_eq!(back, *value);
        }
    }

    #[test]
    fn long_values_are_cut() {
        let long = "é".repeat(5000);
        let line = Line {
            sub: Some(&long),
            path: Some(&long),
            detail: Some(&long),
            ..line()
        };
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = formatted(format, &line);
            assert!(out.len() < 4 * MAX_VALUE_BYTES, "{} bytes", out.len());
            assert_eq!(out.matches('…').count(), 3);
        }
        let json: serde_json::Value =
            serde_json::from_str(&formatted(LogFormat::Json, &line)).expect("valid JSON");
        let sub = json["sub"].as_str().unwrap_or_default();
        assert!(sub.starts_with("éé") && sub.ends_with('…') && sub.len() <= MAX_VALUE_BYTES + 3);
    }

    #[test]
    fn absent_fields_are_left_out() {
        let line = Line {
            decision: "deny",
            reason: "token_missing",
            latency_us: 0,
            ..Line::default()
        };
        assert_eq!(
            formatted(LogFormat::Text, &line),
            "2026-11-29T04:37:37.880245Z  INFO certbound::decision: check decision=\"deny\" \
             reason=\"token_missing\" latency_us=0\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&formatted(LogFormat::Json, &line)).expect("valid JSON");
        assert_eq!(json.as_object().map(|o| o.len()), Some(7), "{json}");
    }

    #[test]
    fn numbers_are_written_in_full() {
        for n in [0, 7, 10, 999_999, u64::MAX] {
            let mut out = String::new();
            push_number(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}
