//! The report's unit tests.

use super::*;

#[test]
fn values_are_formatted_in_their_units() {
    assert_eq!(format_rate(950.0), "950/s");
    assert_eq!(format_rate(12_345.0), "12.3k/s");
    assert_eq!(format_rate(1_234_567.0), "1.23M/s");
    assert_eq!(format_rate(999_999.0), "1.00M/s");
    assert_eq!(format_rate(999.7), "1.00k/s");
    assert_eq!(format_value(Unit::Decimal, 0.0123), "0.0123");
    assert_eq!(format_value(Unit::Decimal, 0.00412), "0.00412");
    assert_eq!(format_value(Unit::Decimal, 0.17), "0.170");
    assert_eq!(format_value(Unit::Decimal, 0.0), "0.00");
    assert_eq!(format_value(Unit::Decimal, 2.345), "2.35");
    assert_eq!(format_value(Unit::Percent, 0.256), "26%");
    assert_eq!(format_micros(8.765), "8.77 µs");
    assert_eq!(format_micros(12_500.0), "12.5 ms");
    assert_eq!(format_micros(2_500_000.0), "2.50 s");
    assert_eq!(format_micros(999.9), "1.00 ms");
    assert_eq!(format_bytes(900.0), "900 B");
    assert_eq!(format_bytes(1536.0), "1.50 KiB");
    assert_eq!(format_bytes(3.0 * 1024.0 * 1024.0), "3.00 MiB");
    assert_eq!(format_value(Unit::KiB, 2048.0), "2.00 MiB");
    assert_eq!(format_count(15_000.0), "15,000");
    assert_eq!(format_count(999.0), "999");
    assert_eq!(format_count(1_000_000.0), "1,000,000");
    assert_eq!(format_count(-1234.0), "-1,234");
}

#[test]
fn median_run_of_each_group() {
    let runs = [("a", 3.0), ("b", 1.0), ("a", 1.0), ("a", 2.0), ("b", 5.0)];
    let medians = median_runs(&runs, |r| r.0, |r| Some(r.1));
    assert_eq!(medians, vec![("a", 2.0), ("b", 1.0)]);
    let one = median_runs(&runs[..1], |r| r.0, |_| None);
    assert_eq!(one, vec![("a", 3.0)]);
}

#[test]
fn ratios_need_a_positive_baseline() {
    assert_eq!(ratio(3.0, 2.0), Some(1.5));
    assert_eq!(ratio(3.0, 0.0), None);
    assert_eq!(ratio(f64::NAN, 1.0), None);
}

#[test]
fn table_shows_ratios_against_the_baseline_column() {
    let columns = vec!["uring".to_string(), "poll".to_string(), "tokio".to_string()];
    let mut section = Section::new("echo: 500 clients", columns);
    section
        .row(
            "requests/s",
            Unit::Rate,
            vec![Some(150_000.0), None, Some(100_000.0)],
        )
        .plain_row(
            "server CPU (cores)",
            Unit::Cores,
            vec![Some(1.0), Some(1.5), Some(2.0)],
        );
    let text = section.render();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "echo: 500 clients");
    assert!(lines[1].ends_with("tokio"), "{text}");
    assert!(lines[2].contains("150k/s (1.50×)"), "{text}");
    assert!(lines[2].contains(" - "), "{text}");
    assert!(lines[2].ends_with("100k/s"), "{text}");
    assert!(!lines[3].contains('×'), "{text}");
    // Columns line up: every cell ends where its header ends.
    let header_end = lines[1].chars().count();
    assert_eq!(lines[2].chars().count(), header_end, "{text}");
    assert_eq!(lines[3].chars().count(), header_end, "{text}");
}

#[test]
fn targets_say_by_how_much_they_were_missed() {
    let met = TargetResult::new("t", "uring", TargetKind::RatioAtMost, 0.7, 0.8);
    assert!(met.met);
    assert_eq!(met.verdict(), "uring 0.70× met");
    let missed = TargetResult::new("t", "poll", TargetKind::RatioAtMost, 1.0, 0.8);
    assert!(!missed.met);
    assert_eq!(missed.missed_by_percent.map(|p| p.round()), Some(25.0));
    assert_eq!(missed.verdict(), "poll 1.00× MISSED by 25%");
    let bytes = TargetResult::new("idle", "uring", TargetKind::BytesAtMost, 2048.0, 1024.0);
    assert_eq!(bytes.verdict(), "uring 2.00 KiB MISSED by 100%");
    let text = render_targets(&[met, missed, bytes]);
    assert_eq!(text.lines().count(), 2);
    assert!(text
        .lines()
        .next()
        .unwrap()
        .contains("uring 0.70× met; poll 1.00× MISSED by 25%"));
}

#[test]
fn latency_of_an_histogram() {
    let mut histogram = crate::load::latency_histogram();
    for value in 1..=1000u64 {
        histogram.record(value).unwrap();
    }
    let latency = Latency::from_histogram(&histogram);
    assert_eq!(latency.count, 1000);
    assert_eq!(latency.p50_us, 500);
    assert_eq!(latency.p99_us, 990);
    assert_eq!(latency.max_us, 1000);
    assert_eq!(
        Latency::from_histogram(&crate::load::latency_histogram()).count,
        0
    );
}
