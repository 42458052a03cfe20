//! UTC timestamps as RFC 3339 text (`2024-05-01T12:34:56.789Z`), without a calendar library:
//! the civil-from-days and days-from-civil conversions of the proleptic Gregorian calendar.

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Microseconds since the Unix epoch as RFC 3339 UTC with milliseconds.
#[must_use]
pub fn format_micros(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let ms = (us % 1_000_000) / 1000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The UTC date of a timestamp as `YYYY-MM-DD` and `HHMMSS`, for file names.
#[must_use]
pub fn date_and_time(us: u64) -> (String, String) {
    let secs = (us / 1_000_000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Parses a time given to the HTTP API: whole Unix seconds, a date `YYYY-MM-DD` (midnight
/// UTC), or RFC 3339 `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`. Returns microseconds since
/// the Unix epoch; times before 1970 or after 9999 are refused.
#[must_use]
pub fn parse(s: &str) -> Option<u64> {
    if !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok()?.checked_mul(1_000_000);
    }
    if s.len() > 40 || !s.is_ascii() {
        return None;
    }
    let date = s.get(..10)?;
    let y = digits(date.get(..4)?, 4)?;
    let m = digits(date.get(5..7)?, 2)?;
    let d = digits(date.get(8..10)?, 2)?;
    if &date[4..5] != "-" || &date[7..8] != "-" || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let month_days = match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if d > month_days {
        return None;
    }
    let days = days_from_civil(i64::from(y), m, d);
    let mut us = days.checked_mul(86_400_000_000)?;
    let rest = &s[10..];
    if !rest.is_empty() {
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        let hh = digits(rest.get(..2)?, 2)?;
        let mm = digits(rest.get(3..5)?, 2)?;
        let ss = digits(rest.get(6..8)?, 2)?;
        if &rest[2..3] != ":" || &rest[5..6] != ":" || hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        us += i64::from(hh * 3600 + mm * 60 + ss) * 1_000_000;
        let mut tail = &rest[8..];
        if let Some(frac) = tail.strip_prefix('.') {
            let n = frac.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 || n > 9 {
                return None;
            }
            let mut f: i64 = frac[..n].parse().ok()?;
            for _ in n..6 {
                f *= 10;
            }
            for _ in 6..n {
                f /= 10;
            }
            us += f;
            tail = &frac[n..];
        }
        let offset = match tail {
            "Z" | "z" => 0,
            t if t.len() == 6 && matches!(&t[..1], "+" | "-") && &t[3..4] == ":" => {
                let oh = i64::from(digits(&t[1..3], 2)?);
                let om = i64::from(digits(&t[4..6], 2)?);
                if oh > 23 || om > 59 {
                    return None;
                }
                let o = (oh * 3600 + om * 60) * 1_000_000;
                if &t[..1] == "+" { o } else { -o }
            }
            _ => return None,
        };
        us -= offset;
    }
    u64::try_from(us).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(format_micros(0), "1970-01-01T00:00:00.000Z");
        let t = 1_714_566_896_789_000; // 2024-05-01T12:34:56.789Z
        assert_eq!(format_micros(t), "2024-05-01T12:34:56.789Z");
        assert_eq!(parse("2024-05-01T12:34:56.789Z"), Some(t));
        assert_eq!(parse("2024-05-01T14:34:56.789+02:00"), Some(t));
        assert_eq!(parse("2024-05-01T12:34:56Z"), Some(t - 789_000));
        assert_eq!(
            parse("2024-05-01"),
            Some(t - (12 * 3600 + 34 * 60 + 56) * 1_000_000 - 789_000)
        );
        assert_eq!(parse("1714566896"), Some(1_714_566_896_000_000));
        assert_eq!(date_and_time(t), ("2024-05-01".into(), "123456".into()));
        assert_eq!(
            format_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        for s in [0u64, 951_782_400_000_000, 4_102_444_800_000_000, t] {
            assert_eq!(parse(&format_micros(s)), Some(s - s % 1000));
        }
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "yesterday",
            "2024-13-01",
            "2023-02-29",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00+2",
            "1969-12-31T23:59:59Z",
            "9999999999999",
            "2024-05-01T12:00:00.Z",
            "２０２４-05-01",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }
}
