//! The samples of a Prometheus text exposition (what `/metrics` serves),
//! read back for the tests' assertions. Needs no `metrics` feature.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// The samples of a Prometheus text exposition, keyed
/// `name{label="value",...}` with the labels sorted by name.
#[derive(Debug)]
pub struct Samples {
    pub text: String,
    pub values: BTreeMap<String, f64>,
}

impl Samples {
    pub fn parse(text: &str) -> Self {
        let mut values = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}"));
            let key = match series.split_once('{') {
                None => format!("{series}{{}}"),
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect("labels end with }");
                    let mut labels: Vec<&str> = labels.split(',').collect();
                    labels.sort_unstable();
                    format!("{name}{{{}}}", labels.join(","))
                }
            };
            values.insert(key, value);
        }
        Self {
            text: text.to_owned(),
            values,
        }
    }

    /// The value of one series, written with its labels sorted by name.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.values.get(series).copied()
    }
}
