//! Configuration built in code.

use clap::{CommandFactory, FromArgMatches};

/// `T` with every command-line default and nothing else: no argument and no
/// environment variable is read. The all-in-one builds each service's
/// configuration this way, so a stray `CHAT_LOG=kafka` (or any other
/// service setting) in its environment cannot reach the embedded services.
///
/// # Panics
///
/// When an argument of `T` has neither a default nor is optional: a
/// programming error, caught by each configuration's unit tests.
pub fn defaults<T: CommandFactory + FromArgMatches>() -> T {
    let command = T::command().mut_args(|arg| arg.env(None::<&'static str>));
    let name = command.get_name().to_owned();
    let matches = command
        .try_get_matches_from([name])
        .unwrap_or_else(|e| panic!("defaults of {}: {e}", std::any::type_name::<T>()));
    T::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("defaults of {}: {e}", std::any::type_name::<T>()))
}

/// The error for a backend this binary was built without: `choice` (such
/// as `--log kafka`) needs the Cargo feature `feature`.
pub fn not_built(choice: &str, feature: &str) -> String {
    format!(
        "{choice} needs the `{feature}` feature, which this binary was built without \
         (the all-in-one builds only the embedded backends; run the service's own binary, \
         or build with `--features {feature}`)"
    )
}

/// For each configuration's unit tests: `T`'s command line is well formed
/// (clap's own checks) and each of `positive` refuses `0` while parsing, so
/// the limit it sets needs no later check.
///
/// # Panics
///
/// When either does not hold.
pub fn assert_well_formed<T: CommandFactory>(positive: &[&str]) {
    let command = T::command();
    command.clone().debug_assert();
    let name = command.get_name().to_owned();
    for flag in positive {
        let err = command
            .clone()
            .try_get_matches_from([name.as_str(), flag, "0"])
            .expect_err("zero is refused while parsing");
        assert!(err.to_string().contains(flag), "{flag}: {err}");
    }
}

/// The settings every service binary has, as fields of its configuration
/// `$config`: `listen: SocketAddr`, `data_dir: PathBuf`, `log_format:
/// LogFormat`, `cors: CorsConfig` and `connections: ConnectionLimits`. Implements
/// [`ServiceConfig`](crate::server::ServiceConfig) from them, and gives
/// `$config` `embedded(data_dir)`: every default (never the environment, see
/// [`defaults`]), that data directory and a free loopback port, for tests
/// and for embedding services in one process.
#[macro_export]
macro_rules! service_config {
    ($config:ty) => {
        impl $crate::server::ServiceConfig for $config {
            fn listen(&self) -> ::std::net::SocketAddr {
                self.listen
            }

            fn log_format(&self) -> $crate::telemetry::LogFormat {
                self.log_format
            }

            fn cors(&self) -> &$crate::cors::CorsConfig {
                &self.cors
            }

            fn connections(&self) -> &$crate::server::ConnectionLimits {
                &self.connections
            }
        }

        impl $config {
            /// Every default (never the environment), with `data_dir` and a
            /// free loopback port.
            pub fn embedded(data_dir: impl Into<::std::path::PathBuf>) -> Self {
                let mut config: Self = $crate::config::defaults();
                config.listen = ::std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                config.data_dir = data_dir.into();
                config
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Settings {
        #[arg(long, env = "SERVICE_KIT_CONFIG_TEST_MODE", default_value = "embedded")]
        mode: String,
    }

    #[test]
    fn defaults_ignore_the_environment() {
        // Set for this process only; no other test reads this name.
        std::env::set_var("SERVICE_KIT_CONFIG_TEST_MODE", "kafka");
        assert_eq!(
            Settings::parse_from(["x"]).mode,
            "kafka",
            "parsing reads it"
        );
        assert_eq!(super::defaults::<Settings>().mode, "embedded");
    }
}
