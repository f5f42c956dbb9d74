//! `strftime_now` for chat templates (Llama 3.2 writes "Today Date: 09 Mar 2025" into its system prompt).
//!
//! Only the C `strftime` directives that templates use are implemented, on UTC civil time computed from
//! the Unix epoch; this keeps a date library out of the engine. Unknown directives are copied through
//! unchanged, as glibc does.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    month: u32, // 1..=12
    day: u32,   // 1..=31
    hour: u32,
    minute: u32,
    second: u32,
    weekday: usize,   // 0 = Sunday
    day_of_year: u32, // 1..=366
}

impl CivilTime {
    fn from_system_time(t: SystemTime) -> Self {
        let secs = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let jan1 = days_from_civil(year, 1, 1);
        CivilTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as usize,
            day_of_year: (days - jan1 + 1) as u32,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar, counting in
/// 400-year eras that start on March 1st so that the leap day falls at the end of each year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year, 0..365
    let mp = (5 * doy + 2) / 153; // March-based month, 0..11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats `t` (as UTC) with C `strftime` directives.
pub(crate) fn strftime(format: &str, t: SystemTime) -> String {
    let c = CivilTime::from_system_time(t);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        let Some(directive) = chars.next() else {
            out.push('%');
            break;
        };
        let month_name = MONTHS[(c.month as usize).saturating_sub(1) % 12];
        let weekday_name = WEEKDAYS[c.weekday % 7];
        let hour12 = if c.hour.is_multiple_of(12) {
            12
        } else {
            c.hour % 12
        };
        match directive {
            'Y' => out.push_str(&c.year.to_string()),
            'y' => out.push_str(&format!("{:02}", c.year.rem_euclid(100))),
            'm' => out.push_str(&format!("{:02}", c.month)),
            'd' => out.push_str(&format!("{:02}", c.day)),
            'e' => out.push_str(&format!("{:2}", c.day)),
            'j' => out.push_str(&format!("{:03}", c.day_of_year)),
            'H' => out.push_str(&format!("{:02}", c.hour)),
            'I' => out.push_str(&format!("{hour12:02}")),
            'M' => out.push_str(&format!("{:02}", c.minute)),
            'S' => out.push_str(&format!("{:02}", c.second)),
            'p' => out.push_str(if c.hour < 12 { "AM" } else { "PM" }),
            'B' => out.push_str(month_name),
            'b' | 'h' => out.push_str(&month_name[..3]),
            'A' => out.push_str(weekday_name),
            'a' => out.push_str(&weekday_name[..3]),
            'w' => out.push_str(&c.weekday.to_string()),
            'F' => out.push_str(&format!("{}-{:02}-{:02}", c.year, c.month, c.day)),
            'T' => out.push_str(&format!("{:02}:{:02}:{:02}", c.hour, c.minute, c.second)),
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn formats_known_instants() {
        // 2025-03-09T14:05:07Z (`date -u -d @1741529107`), a Sunday, day 68 of the year.
        let t = at(1_741_529_107);
        assert_eq!(strftime("%d %b %Y", t), "09 Mar 2025");
        assert_eq!(
            strftime("%A %B %e, %H:%M:%S %p %j %y%%", t),
            "Sunday March  9, 14:05:07 PM 068 25%"
        );
        // 2024-02-29T23:59:59Z, a leap day and a Thursday.
        assert_eq!(
            strftime("%F %T %a %I", at(1_709_251_199)),
            "2024-02-29 23:59:59 Thu 11"
        );
        assert_eq!(strftime("%F %a %Q", at(0)), "1970-01-01 Thu %Q");
    }

    #[test]
    fn civil_round_trip() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
