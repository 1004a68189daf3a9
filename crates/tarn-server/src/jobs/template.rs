//! The parameters of a task's try, templated into its SQL, paths and commands as `{{ name }}`:
//! `ds`, `ds_nodash`, `ts`, `logical_date`, `data_interval_start`, `data_interval_end`,
//! `run_id`, `job`, `task`, `try_number`, and `params.NAME`. An unknown name is an error naming
//! it — a typo never runs as literal text. Written here rather than with a template engine:
//! substitution of known names is all it does, and nothing in a value is evaluated.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};

/// The values of one try.
#[derive(Debug, Clone)]
pub struct Context {
    vars: BTreeMap<String, String>,
}

impl Context {
    /// The values of try `try_number` of task `task` in run `run_id` of `job`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: &str,
        run_id: &str,
        task: &str,
        try_number: i64,
        logical_date: DateTime<Utc>,
        interval: (DateTime<Utc>, DateTime<Utc>),
        params: &BTreeMap<String, String>,
    ) -> Self {
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut vars = BTreeMap::new();
        vars.insert("ds".into(), logical_date.format("%Y-%m-%d").to_string());
        vars.insert("ds_nodash".into(), logical_date.format("%Y%m%d").to_string());
        vars.insert("ts".into(), ts(logical_date));
        vars.insert("logical_date".into(), ts(logical_date));
        vars.insert("data_interval_start".into(), ts(interval.0));
        vars.insert("data_interval_end".into(), ts(interval.1));
        vars.insert("run_id".into(), run_id.into());
        vars.insert("job".into(), job.into());
        vars.insert("task".into(), task.into());
        vars.insert("try_number".into(), try_number.to_string());
        for (k, v) in params {
            vars.insert(format!("params.{k}"), v.clone());
        }
        Self { vars }
    }

    /// The values as environment variables for commands: `TARN_DS`, `TARN_RUN_ID`, ...,
    /// `TARN_PARAM_NAME`.
    pub fn env(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| {
                let name = match k.strip_prefix("params.") {
                    Some(p) => format!("TARN_PARAM_{}", p.to_ascii_uppercase()),
                    None => format!("TARN_{}", k.to_ascii_uppercase()),
                };
                (name, v.clone())
            })
            .collect()
    }

    /// `text` with every `{{ name }}` replaced; `what` names the field in errors.
    pub fn render(&self, what: &str, text: &str) -> Result<String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                bail!("{what}: `{{{{` without a closing `}}}}`");
            };
            let name = after[..close].trim();
            match self.vars.get(name) {
                Some(v) => out.push_str(v),
                None => bail!(
                    "{what}: unknown template name `{{{{ {name} }}}}`; known: {}",
                    self.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }
            rest = &after[close + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_replaced_and_unknown_names_refused() {
        let t = |s: &str| crate::jobs::spec::parse_time(s).unwrap();
        let params = BTreeMap::from([("region".to_string(), "eu".to_string())]);
        let c = Context::new(
            "daily",
            "r1",
            "load",
            2,
            t("2026-12-01"),
            (t("2026-12-01"), t("2026-12-02")),
            &params,
        );
        assert_eq!(
            c.render(
                "sql",
                "WHERE day = '{{ds}}' AND r = '{{ params.region }}' -- {{ data_interval_end }} {{try_number}}"
            )
            .unwrap(),
            "WHERE day = '2026-12-01' AND r = 'eu' -- 2026-12-02T00:00:00Z 2"
        );
        let e = c.render("task `load`: sql", "{{ dss }}").unwrap_err().to_string();
        assert!(e.contains("task `load`: sql") && e.contains("dss"), "{e}");
        assert!(
            c.env()
                .contains(&("TARN_PARAM_REGION".to_string(), "eu".to_string()))
        );
    }
}
