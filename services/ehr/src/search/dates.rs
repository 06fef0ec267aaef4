//! FHIR dates as ranges of UTC milliseconds: a value stands for every instant it may mean, as
//! precise as it was written. `2020` is the whole year; `2020-05-01T10:00+07:00` one minute.
//! A date-time without an offset is taken as UTC.

/// The smallest and largest instants (ms since the Unix epoch) a date value covers.
pub fn range(text: &str) -> Option<(i64, i64)> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: Option<i64> = parts.next().map(str::parse).transpose().ok()?;
    let day: Option<i64> = parts.next().map(str::parse).transpose().ok()?;
    if parts.next().is_some() || !(1..=9999).contains(&year) {
        return None;
    }
    let Some(time) = time else {
        let (first_month, last_month) = match month {
            Some(m) if (1..=12).contains(&m) => (m, m),
            Some(_) => return None,
            None => (1, 12),
        };
        let (first_day, last_day) = match day {
            Some(d) if d >= 1 && d <= days_in_month(year, last_month) => (d, d),
            Some(_) => return None,
            None => (1, days_in_month(year, last_month)),
        };
        let low = days_from_civil(year, first_month, first_day) * DAY;
        let high = days_from_civil(year, last_month, last_day) * DAY + DAY - 1;
        return Some((low, high));
    };
    let (month, day) = (month?, day?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let (clock, offset_ms) = match time.find(['Z', '+', '-']) {
        Some(i) => (&time[..i], offset(&time[i..])?),
        None => (time, 0),
    };
    let mut fields = clock.split(':');
    let hour: i64 = fields.next()?.parse().ok()?;
    let minute: i64 = fields.next()?.parse().ok()?;
    let (second_ms, width) = match fields.next() {
        None => (0, 60_000),
        Some(s) => {
            let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
            let whole: i64 = whole.parse().ok()?;
            let digits = fraction.len().min(3);
            let mut ms = whole * 1000;
            if digits > 0 {
                ms += fraction[..digits].parse::<i64>().ok()? * 10_i64.pow(3 - digits as u32);
            }
            (ms, 10_i64.pow(3 - digits as u32))
        }
    };
    if fields.next().is_some() || hour > 23 || minute > 59 || second_ms >= 61_000 {
        return None;
    }
    let low =
        days_from_civil(year, month, day) * DAY + hour * 3_600_000 + minute * 60_000 + second_ms
            - offset_ms;
    Some((low, low + width - 1))
}

const DAY: i64 = 86_400_000;

fn offset(text: &str) -> Option<i64> {
    if text == "Z" {
        return Some(0);
    }
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let (h, m) = text[1..].split_once(':')?;
    Some(sign * (h.parse::<i64>().ok()? * 3_600_000 + m.parse::<i64>().ok()? * 60_000))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn every_precision_covers_what_it_means() {
        let (low, high) = range("2020").unwrap();
        assert_eq!(low, 1_577_836_800_000);
        assert_eq!(high, range("2020-12-31").unwrap().1);
        assert_eq!(
            range("2020-02").unwrap().1 + 1,
            range("2020-03-01").unwrap().0
        );
        assert_eq!(range("1970-01-01T00:00:00Z"), Some((0, 999)));
        assert_eq!(range("1970-01-01T07:00:00.5+07:00"), Some((500, 599)));
        assert_eq!(range("1970-01-01T00:01Z"), Some((60_000, 119_999)));
        for bad in [
            "2020-13",
            "2021-02-29",
            "20x0",
            "2020-01-01T25:00Z",
            "2020-01-01T10:00:00+7",
        ] {
            assert_eq!(range(bad), None, "{bad}");
        }
        assert!(range("2024-02-29").is_some());
    }
}
