//! Property test of the mailer's configuration: arbitrary values of any of
//! its variables never panic the parser, and every error names a variable.

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
        picks in prop::collection::vec((any::<usize>(), ".{0,40}"), 1..4),
    ) {
        // Not the `_FILE` twins: they name files, not to be read at random.
        let (names, vars) = shared::config::picked_variables::<Cli>(picks);
        if let Err(e) = Settings::from_vars(vars) {
            prop_assert!(names.contains(&e.var), "{e}");
        }
    }
}
