//! The stable bucket of a device in a rollout: the service and every device compute it the
//! same way, so one retained notice per group can say "buckets below 1000" and each device
//! decides for itself whether the wave covers it.

use sha2::{Digest, Sha256};

use crate::device::DeviceId;

/// Buckets run from 0 to `BUCKETS - 1`; a threshold of `BUCKETS` covers every device.
pub const BUCKETS: u16 = 10_000;

/// The device's bucket in `rollout`: the first 8 bytes of
/// SHA-256(`fleetwave/bucket/v1\n` ‖ rollout ‖ `\n` ‖ device), big-endian, modulo [`BUCKETS`].
/// Stable across versions, platforms and restarts, and independent between rollouts.
pub fn bucket(device: &DeviceId, rollout: &str) -> u16 {
    let digest = Sha256::new()
        .chain_update(b"fleetwave/bucket/v1\n")
        .chain_update(rollout.as_bytes())
        .chain_update(b"\n")
        .chain_update(device.as_str().as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u16
}

/// Whether a wave whose cumulative threshold is `threshold` covers the device.
pub fn covers(threshold: u16, device: &DeviceId, rollout: &str) -> bool {
    bucket(device, rollout) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_spread_and_independent_between_rollouts() {
        let ids: Vec<DeviceId> = (0..10_000)
            .map(|i| DeviceId::parse(&format!("pi-{i:05}")).unwrap())
            .collect();
        // Pinned values, computed independently (Python hashlib): any change to the function
        // would split the service and deployed devices.
        assert_eq!(bucket(&ids[0], "r1"), 5297);
        assert_eq!(bucket(&ids[1], "r1"), 5892);
        assert_eq!(
            bucket(&DeviceId::parse("device-1").unwrap(), "rollout-a"),
            5334
        );
        let in_canary = ids.iter().filter(|d| covers(100, d, "r1")).count();
        assert!(
            (50..=150).contains(&in_canary),
            "1% canary holds {in_canary} of 10000"
        );
        let half = ids.iter().filter(|d| covers(5_000, d, "r1")).count();
        assert!((4_700..=5_300).contains(&half), "{half}");
        let both = ids
            .iter()
            .filter(|d| covers(1_000, d, "r1") && covers(1_000, d, "r2"))
            .count();
        // Independent 10 % waves share about 1 % of the fleet.
        assert!(
            (60..=140).contains(&both),
            "canaries of two rollouts are independent: {both} in both"
        );
        assert!(
            ids.iter().all(|d| covers(BUCKETS, d, "r1")),
            "the full threshold covers all"
        );
    }
}
