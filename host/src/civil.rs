//! Calendar dates of UTC timestamps, without a date crate: the one conversion the CLI's
//! log lines, backup file names and OCI artifact timestamps share.

/// The UTC `(year, month, day)` of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`; proleptic Gregorian, correct for negative days too).
pub fn from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}
