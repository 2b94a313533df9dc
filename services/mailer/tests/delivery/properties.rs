//! Property test of the mailer's configuration: arbitrary values of any of
//! its variables never panic the parser, and every error names a variable.

use std::collections::HashMap;

use mailer::config::{Cli, Settings};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_configuration_never_panics_and_errors_name_a_variable(
        picks in prop::collection::vec((any::<prop::sample::Index>(), ".{0,40}"), 1..4),
    ) {
        // The `_FILE` twins name files, which the test must not read at random.
        let names: Vec<String> = shared::config::variables::<Cli>()
            .into_iter()
            .map(|v| v.name)
            .collect();
        let vars: HashMap<String, String> = picks
            .into_iter()
            .map(|(i, v)| (i.get(&names).clone(), v))
            .collect();
        if let Err(e) = Settings::from_vars(vars) {
            prop_assert!(names.contains(&e.var), "{e}");
        }
    }
}
