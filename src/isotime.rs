//! ISO-8601 date-times: reading the ones phone apps send and writing the ones GPX needs.
//!
//! Only the shapes seen in practice are read: `2024-05-01T12:30:00Z`, with optional fractional
//! seconds, a `+02:00`/`+0200`/`+02` offset or none (UTC), a space instead of the `T` (the
//! `yyyy-MM-dd HH:mm:ss` form of older trackers), or a bare date (midnight UTC). A space before
//! the offset is read as `+`, because a `+` left unencoded in a URL's query decodes to a space
//! (`?from=2025-11-22T08:00:00+01:00`). Week dates,
//! ordinal dates and the basic (separator-free) format are refused. Everything is in ms since
//! the Unix epoch, UTC, using the proleptic Gregorian calendar.

/// A string that is not a date-time this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an ISO-8601 date-time (expected e.g. 2024-05-01T12:30:00Z)")]
pub struct TimeError;

const MS_PER_DAY: i64 = 86_400_000;

/// Days from 1970-01-01 to the civil date `year-month-day` (negative before 1970).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count from 0000-03-01 so the leap day falls at the end of each counted year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date `(year, month, day)` of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A cursor over the bytes of a date-time.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, wanted: &[u8]) -> bool {
        match self.peek() {
            Some(b) if wanted.contains(&b) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, wanted: u8) -> Result<(), TimeError> {
        if self.eat(&[wanted]) {
            Ok(())
        } else {
            Err(TimeError)
        }
    }

    /// Exactly `n` ASCII digits as a number.
    fn digits(&mut self, n: usize) -> Result<i64, TimeError> {
        let end = self.at + n;
        let slice = self.bytes.get(self.at..end).ok_or(TimeError)?;
        let mut value = 0;
        for &b in slice {
            if !b.is_ascii_digit() {
                return Err(TimeError);
            }
            value = value * 10 + i64::from(b - b'0');
        }
        self.at = end;
        Ok(value)
    }

    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

/// Parses an ISO-8601 date-time (see the module doc for the shapes read) into ms since the
/// epoch.
pub fn parse_ms(text: &str) -> Result<i64, TimeError> {
    let mut c = Cursor {
        bytes: text.trim().as_bytes(),
        at: 0,
    };
    let year = c.digits(4)?;
    c.expect(b'-')?;
    let month = c.digits(2)?;
    c.expect(b'-')?;
    let day = c.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(TimeError);
    }
    let mut ms = days_from_civil(year, month, day) * MS_PER_DAY;
    if c.done() {
        return Ok(ms);
    }
    if !c.eat(b"Tt ") {
        return Err(TimeError);
    }
    let hour = c.digits(2)?;
    c.expect(b':')?;
    let minute = c.digits(2)?;
    let mut second = 0;
    let mut millis = 0;
    if c.eat(b":") {
        second = c.digits(2)?;
        if c.eat(b".,") {
            let mut scale = 100;
            let mut any = false;
            while let Some(b) = c.peek().filter(u8::is_ascii_digit) {
                millis += i64::from(b - b'0') * scale;
                scale /= 10;
                any = true;
                c.at += 1;
            }
            if !any {
                return Err(TimeError);
            }
        }
    }
    // 24:00 and leap seconds are refused rather than guessed at.
    if hour > 23 || minute > 59 || second > 59 {
        return Err(TimeError);
    }
    ms += ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    let offset_minutes = match c.peek() {
        None => 0,
        Some(b'Z' | b'z') => {
            c.at += 1;
            0
        }
        Some(sign @ (b'+' | b'-' | b' ')) => {
            c.at += 1;
            let hours = c.digits(2)?;
            let minutes = if c.done() {
                0
            } else {
                c.eat(b":");
                c.digits(2)?
            };
            if hours > 23 || minutes > 59 {
                return Err(TimeError);
            }
            let total = hours * 60 + minutes;
            if sign == b'-' { -total } else { total }
        }
        Some(_) => return Err(TimeError),
    };
    if !c.done() {
        return Err(TimeError);
    }
    Ok(ms - offset_minutes * 60_000)
}

/// Formats ms since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn format_ms(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (second, millis) = (in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shapes_apps_send() {
        // 2021-03-20T14:10:57Z = 1616249457 s.
        for text in [
            "2021-03-20T14:10:57Z",
            "2021-03-20T14:10:57.000Z",
            "2021-03-20t14:10:57z",
            "2021-03-20 14:10:57",
            "2021-03-20T14:10:57",
            "2021-03-20T16:10:57+02:00",
            "2021-03-20T16:10:57+0200",
            "2021-03-20T16:10:57+02",
            "2021-03-20T13:40:57-00:30",
            "2021-03-20T16:10:57 02:00",
            " 2021-03-20T14:10:57Z ",
        ] {
            assert_eq!(parse_ms(text), Ok(1_616_249_457_000), "{text}");
        }
        assert_eq!(parse_ms("2021-03-20T14:10:57.25Z"), Ok(1_616_249_457_250));
        assert_eq!(
            parse_ms("2021-03-20T14:10:57,123456Z"),
            Ok(1_616_249_457_123)
        );
        assert_eq!(parse_ms("2021-03-20T14:10Z"), Ok(1_616_249_400_000));
        assert_eq!(parse_ms("1970-01-01"), Ok(0));
        assert_eq!(parse_ms("2024-02-29"), Ok(1_709_164_800_000));
        assert_eq!(parse_ms("1969-12-31T23:59:59Z"), Ok(-1000));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for text in [
            "",
            "yesterday",
            "2021-3-20",
            "2021-13-01",
            "2021-02-29",
            "2023-04-31",
            "2021-03-20T24:00:00Z",
            "2021-03-20T14:60:00Z",
            "2021-03-20T14:10:61Z",
            "2021-03-20T14:10:57.Z",
            "2021-03-20T14:10:57Zjunk",
            "2021-03-20T14:10:57+2",
            "2021-03-20T14:10:57 Z",
            "2021-03-20T14:10:57+25:00",
            "2021-03-20X14:10:57",
            "20210320T141057Z",
            "2021-03-20T14",
        ] {
            assert_eq!(parse_ms(text), Err(TimeError), "{text:?}");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_616_249_457_250), "2021-03-20T14:10:57.250Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        // Every day over four centuries, both ways.
        let start = days_from_civil(1900, 1, 1);
        for days in (start..start + 146_097).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            let ms = days * MS_PER_DAY + 45_296_789;
            assert_eq!(parse_ms(&format_ms(ms)), Ok(ms));
        }
    }
}
