//! Install rules, in one place: may this device install this verified release now?
//! The service checks them before queueing a device and the agent checks them again before
//! writing a slot, so both sides call this one function.

use semver::Version;

use crate::error::Error;
use crate::manifest::{Manifest, Timestamp};
use crate::signing::VerifiedManifest;

/// What the installing side knows about the device.
#[derive(Clone, Copy, Debug)]
pub struct Device<'a> {
    /// The device's hardware id.
    pub hardware: &'a str,
    /// The version it runs, if known.
    pub installed: Option<&'a Version>,
    /// The highest security floor of any release it committed.
    pub security_floor: Option<&'a Version>,
}

/// How the install is asked for.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// The time to judge expiry by.
    pub now: Timestamp,
    /// Allow reinstalling the version already running.
    pub force: bool,
}

/// Checks every install rule, in a fixed order, and returns the first that fails.
///
/// The signature threshold is already met: a [`VerifiedManifest`] exists only after
/// [`crate::TrustedKeys::verify`]. Then: not expired; hardware listed; version at or above the
/// device's security floor; the device runs at least the release's minimum version; the
/// version is newer than the installed one (equal only when forced).
pub fn check(
    release: &VerifiedManifest,
    device: Device<'_>,
    request: Request,
) -> Result<(), Error> {
    check_manifest(release.manifest(), device, request)
}

/// [`check`] for a manifest whose signatures were verified elsewhere: the service verified
/// every stored release at upload and checks these rules again before queueing a device.
pub fn check_manifest(m: &Manifest, device: Device<'_>, request: Request) -> Result<(), Error> {
    if request.now >= m.expires_at {
        return Err(Error::Expired {
            expires_at: m.expires_at,
        });
    }
    if !m.supports(device.hardware) {
        return Err(Error::IncompatibleHardware {
            hardware: device.hardware.to_owned(),
            supported: m.hardware.iter().map(ToString::to_string).collect(),
        });
    }
    if let Some(floor) = device.security_floor.filter(|f| &m.version < *f) {
        return Err(Error::BelowSecurityFloor {
            offered: m.version.clone(),
            floor: floor.clone(),
        });
    }
    if let Some(required) = &m.min_version {
        if device.installed.is_none_or(|v| v < required) {
            return Err(Error::MinimumVersionNotMet {
                installed: device.installed.cloned(),
                required: required.clone(),
            });
        }
    }
    if let Some(installed) = device.installed {
        let newer = &m.version > installed || (request.force && &m.version == installed);
        if !newer {
            return Err(Error::NotNewer {
                installed: installed.clone(),
                offered: m.version.clone(),
            });
        }
    }
    Ok(())
}

/// Fails when the release's validity has ended at `now` (freeze protection).
pub fn check_unexpired(release: &VerifiedManifest, now: Timestamp) -> Result<(), Error> {
    let expires_at = release.manifest().expires_at;
    if now >= expires_at {
        return Err(Error::Expired { expires_at });
    }
    Ok(())
}

/// The device's security floor after committing `release`: the higher of the two.
pub fn floor_after(current: Option<&Version>, release: &VerifiedManifest) -> Option<Version> {
    match (current, release.manifest().security_floor.as_ref()) {
        (Some(a), Some(b)) => Some(a.max(b).clone()),
        (a, b) => a.or(b).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{sample, verified};

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn device<'a>(installed: Option<&'a Version>, floor: Option<&'a Version>) -> Device<'a> {
        Device {
            hardware: "rpi4",
            installed,
            security_floor: floor,
        }
    }

    const NOW: Request = Request {
        now: Timestamp::from_unix(1_850_000_000),
        force: false,
    };

    #[test]
    fn a_newer_compatible_release_installs() {
        let release = verified(sample());
        check(&release, device(Some(&v("1.2.2")), Some(&v("1.0.0"))), NOW).unwrap();
        check(&release, device(None, None), NOW).unwrap();
    }

    #[test]
    fn each_rule_has_its_own_error() {
        let release = verified(sample());
        let late = Request {
            now: Timestamp::from_unix(1_900_000_000),
            ..NOW
        };
        assert_eq!(
            check(&release, device(None, None), late)
                .unwrap_err()
                .code(),
            "manifest_expired"
        );

        let mut other = device(None, None);
        other.hardware = "rpi5";
        assert_eq!(
            check(&release, other, NOW).unwrap_err().code(),
            "incompatible_hardware"
        );

        let floor = v("2.0.0");
        assert_eq!(
            check(&release, device(None, Some(&floor)), NOW)
                .unwrap_err()
                .code(),
            "below_security_floor"
        );

        let installed = v("1.2.3");
        assert_eq!(
            check(&release, device(Some(&installed), None), NOW)
                .unwrap_err()
                .code(),
            "not_newer"
        );
        let forced = Request { force: true, ..NOW };
        check(&release, device(Some(&installed), None), forced).unwrap();
        let newer = v("1.3.0");
        assert_eq!(
            check(&release, device(Some(&newer), None), forced)
                .unwrap_err()
                .code(),
            "not_newer"
        );

        let mut m = sample();
        m.min_version = Some(v("1.1.0"));
        let release = verified(m);
        let old = v("1.0.9");
        assert_eq!(
            check(&release, device(Some(&old), None), NOW)
                .unwrap_err()
                .code(),
            "minimum_version_not_met"
        );
        assert_eq!(
            check(&release, device(None, None), NOW).unwrap_err().code(),
            "minimum_version_not_met"
        );
        let ok = v("1.1.0");
        check(&release, device(Some(&ok), None), NOW).unwrap();
    }

    #[test]
    fn floor_only_rises() {
        let release = verified(sample());
        assert_eq!(floor_after(None, &release), Some(v("1.0.0")));
        assert_eq!(floor_after(Some(&v("0.9.0")), &release), Some(v("1.0.0")));
        assert_eq!(floor_after(Some(&v("1.1.0")), &release), Some(v("1.1.0")));
    }
}
