//! Enums written by name — in flags, configs, URLs and files — with one list of names and one
//! parser each, so the CLI, the config reader and the web app accept and refuse the same words
//! and no view or flag falls back silently to a default.
//!
//! `named!` gives an enum [`Named`] (its names in order), [`std::str::FromStr`] (an unknown name
//! is an error listing the known ones) and [`std::fmt::Display`]. The CLI builds its flags'
//! possible values from [`Named::NAMES`] (`trainer/src/cli.rs`, `named_parser`), so `--help`
//! lists exactly what parses; `shared` itself stays free of CLI crates.

use crate::error::{Error, Result};

/// An enum with a fixed set of names.
pub trait Named: Sized + Copy + 'static {
    /// What a value is, for errors: "merge method".
    const WHAT: &'static str;
    /// Every value, in the order help texts and menus list them.
    const ALL: &'static [Self];
    /// Every name, in the order of [`Named::ALL`].
    const NAMES: &'static [&'static str];

    /// The value's name.
    fn name(self) -> &'static str;

    /// The value of a name, or an error naming the known ones.
    fn from_name(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.name() == s)
            .ok_or_else(|| Error::UnknownName {
                what: Self::WHAT,
                value: s.to_owned(),
                known: Self::NAMES.join(", "),
            })
    }
}

/// Implements [`Named`], `FromStr` and `Display` for a fieldless enum:
/// `named!(Measure, "similarity measure", { CosineMean => "cosine-mean", … });`
#[macro_export]
macro_rules! named {
    ($ty:ty, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $crate::names::Named for $ty {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = &[$(<$ty>::$variant),+];
            const NAMES: &'static [&'static str] = &[$($name),+];
            fn name(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $name),+
                }
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = $crate::error::Error;
            fn from_str(s: &str) -> $crate::error::Result<Self> {
                <$ty as $crate::names::Named>::from_name(s)
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::names::Named::name(*self))
            }
        }
    };
}

/// Weights' and activations' precision, as `--dtype` and `model.dtype` write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

crate::named!(Precision, "dtype", { F32 => "f32", Bf16 => "bf16", F16 => "f16" });

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
            Self::F16 => candle_core::DType::F16,
        }
    }
}

/// Where a model runs, as `--device` and `train.device` write it: `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let unknown = || Error::UnknownName {
            what: "device",
            value: s.to_owned(),
            known: "cpu, cuda, cuda:N".to_owned(),
        };
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(unknown)?;
                n.parse().map(Self::Cuda).map_err(|_| unknown())
            }
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{MergeKind, SignElection};
    use crate::similarity::Measure;

    fn round_trips<T: Named + std::str::FromStr + PartialEq + std::fmt::Debug>() {
        assert_eq!(T::ALL.len(), T::NAMES.len());
        for (v, n) in T::ALL.iter().zip(T::NAMES) {
            assert_eq!(v.name(), *n);
            assert_eq!(T::from_name(n).ok(), Some(*v));
        }
        let err = T::from_name("nonsense")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("nonsense") && err.contains(T::NAMES[0]), "{err}");
    }

    #[test]
    fn every_name_parses_back_and_unknown_names_list_the_known_ones() {
        round_trips::<MergeKind>();
        round_trips::<SignElection>();
        round_trips::<Measure>();
        round_trips::<Precision>();
        round_trips::<crate::eval::set::Scoring>();
        round_trips::<crate::prompt::TaskType>();
        round_trips::<crate::stats::TestKind>();
        round_trips::<crate::study::InitMethod>();
        assert_eq!("cuda:3".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cuda(3)));
        assert_eq!("cuda".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cuda(0)));
        assert_eq!("cpu".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cpu));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }
}
