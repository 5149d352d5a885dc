//! How numbers are written in the tables: rates, microseconds, bytes,
//! counts, ratios.

use super::*;

pub(crate) fn pad_left(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{}{text}", " ".repeat(width.saturating_sub(len)))
}

pub(crate) fn pad_right(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(len)))
}

/// value / base, when both are meaningful.
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    (base > 0.0 && value.is_finite() && base.is_finite()).then(|| value / base)
}

/// A value in its unit, three significant digits.
pub fn format_value(unit: Unit, value: f64) -> String {
    match unit {
        Unit::Rate => format_rate(value),
        Unit::Micros => format_micros(value),
        Unit::Bytes => format_bytes(value),
        Unit::KiB => format_bytes(value * 1024.0),
        Unit::Cores => format!("{value:.2}"),
        Unit::Count => format_count(value),
        Unit::Decimal => decimal(value),
        Unit::Percent => format!("{:.0}%", value * 100.0),
    }
}

pub(crate) fn significant(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A plain number with three significant digits, small ones included:
/// `0.00412`, `0.17`, `2.35`, `123`.
pub(crate) fn decimal(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 || magnitude >= 1.0 || !magnitude.is_finite() {
        return significant(value);
    }
    let digits = (2.0 - magnitude.log10().floor()).clamp(2.0, 9.0) as usize;
    format!("{value:.digits$}")
}

/// `950`, `12.3k`, `1.23M` per second.
pub fn format_rate(value: f64) -> String {
    // Thresholds just below the next unit, so 999,999 reads 1.00M, not 1000k.
    if value.abs() >= 999_500.0 {
        format!("{}M/s", significant(value / 1e6))
    } else if value.abs() >= 999.5 {
        format!("{}k/s", significant(value / 1e3))
    } else {
        format!("{}/s", significant(value))
    }
}

/// Microseconds as `µs`, `ms` or `s`.
pub fn format_micros(value: f64) -> String {
    if value.abs() >= 999_500.0 {
        format!("{} s", significant(value / 1e6))
    } else if value.abs() >= 999.5 {
        format!("{} ms", significant(value / 1e3))
    } else {
        format!("{} µs", significant(value))
    }
}

/// Bytes as `B`, `KiB` or `MiB`.
pub fn format_bytes(value: f64) -> String {
    if value.abs() >= 1023.5 * 1024.0 {
        format!("{} MiB", significant(value / (1024.0 * 1024.0)))
    } else if value.abs() >= 1023.5 {
        format!("{} KiB", significant(value / 1024.0))
    } else {
        format!("{value:.0} B")
    }
}

/// An integer with thousands separators: `15,000`.
pub fn format_count(value: f64) -> String {
    let rounded = value.round();
    let digits = servercore_load::client::count(rounded.abs() as u64);
    if rounded < 0.0 {
        format!("-{digits}")
    } else {
        digits
    }
}
