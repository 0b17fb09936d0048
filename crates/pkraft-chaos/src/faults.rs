//! Carries out one scheduled fault against the running cluster: inject, hold, heal.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

use pkraft_lossyfs::{BadWrite, Cut};
use pkraft_testkit::damage::{
    RecordDamage, StateDamage, damage_log, damage_snapshot, damage_state,
};
use pkraft_testkit::proxy::CutKind;

use crate::cluster::Cluster;
use crate::rng::SplitMix64;
use crate::schedule::{Fault, FaultKind};

/// How long a replacement node may take to appear as a learner, and a promotion to succeed.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// Injects `fault`, holds it, and heals it. Returns what was done, for the run log.
pub async fn apply(cluster: &mut Cluster, fault: &Fault) -> anyhow::Result<String> {
    let leader = cluster.leader().await;
    let ids = cluster.ids();
    let mut rng = SplitMix64::new(fault.pick);
    let others = |of: u64| -> Vec<u64> { ids.iter().copied().filter(|&i| i != of).collect() };
    // With no leader known (an election under way), the fault hits the first node instead;
    // the event line says so.
    let any_leader = || leader.or_else(|| ids.first().copied()).context("no nodes");
    let follower = |rng: &mut SplitMix64| -> anyhow::Result<u64> {
        let candidates = match leader {
            Some(l) => others(l),
            None => ids.clone(),
        };
        rng.pick(&candidates).copied().context("no follower")
    };
    let done = match fault.kind {
        FaultKind::KillFollower => {
            let target = follower(&mut rng)?;
            kill_hold_restart(cluster, &[target], fault.hold).await?
        }
        FaultKind::KillLeader => {
            let target = any_leader()?;
            kill_hold_restart(cluster, &[target], fault.hold).await?
        }
        FaultKind::KillMajority => {
            let first = any_leader()?;
            let mut rest = others(first);
            rng.shuffle(&mut rest);
            let mut targets = vec![first];
            targets.extend(rest.into_iter().take(ids.len() / 2));
            kill_hold_restart(cluster, &targets, fault.hold).await?
        }
        FaultKind::KillAll => kill_hold_restart(cluster, &ids, fault.hold).await?,
        FaultKind::PauseLeader => pause_hold_resume(cluster, any_leader()?, fault.hold).await?,
        FaultKind::PauseFollower => {
            let target = follower(&mut rng)?;
            pause_hold_resume(cluster, target, fault.hold).await?
        }
        FaultKind::IsolateLeader | FaultKind::BlackholeLeader => {
            let target = any_leader()?;
            let (how, done) = cut_of(fault.kind);
            cluster
                .network
                .partition_as(&[target], &others(target), how);
            hold_heal(cluster, fault.hold).await;
            format!("{done} leader {target}")
        }
        FaultKind::IsolateFollower | FaultKind::BlackholeFollower => {
            let target = follower(&mut rng)?;
            let (how, done) = cut_of(fault.kind);
            cluster
                .network
                .partition_as(&[target], &others(target), how);
            hold_heal(cluster, fault.hold).await;
            format!("{done} follower {target}")
        }
        FaultKind::SplitMajority => {
            let mut shuffled = ids.clone();
            rng.shuffle(&mut shuffled);
            let (minority, majority) = shuffled.split_at(ids.len() / 2);
            cluster.network.partition(minority, majority);
            hold_heal(cluster, fault.hold).await;
            format!("split {minority:?} | {majority:?}")
        }
        FaultKind::LeaderCannotSend | FaultKind::BlackholeLeaderSend => {
            let target = any_leader()?;
            let (how, done) = cut_of(fault.kind);
            for other in others(target) {
                cluster.network.cut_as(target, other, how);
            }
            hold_heal(cluster, fault.hold).await;
            format!("leader {target}'s requests {done}")
        }
        FaultKind::LeaderCannotReceive | FaultKind::BlackholeLeaderReceive => {
            let target = any_leader()?;
            let (how, done) = cut_of(fault.kind);
            for other in others(target) {
                cluster.network.cut_as(other, target, how);
            }
            hold_heal(cluster, fault.hold).await;
            format!("requests to leader {target} {done}")
        }
        FaultKind::SlowNetwork => {
            cluster.network.set_delay(fault.delay, fault.jitter);
            hold_heal(cluster, fault.hold).await;
            format!(
                "delayed every peer request {:?}+{:?}",
                fault.delay, fault.jitter
            )
        }
        FaultKind::LossyNetwork => {
            cluster.network.set_loss(fault.loss_percent);
            hold_heal(cluster, fault.hold).await;
            format!("failed {}% of peer requests", fault.loss_percent)
        }
        FaultKind::ReplaceFollower => {
            let leaving = follower(&mut rng)?;
            replace(cluster, leaving).await?
        }
        FaultKind::PowerCutFollower => {
            let target = follower(&mut rng)?;
            power_cut_hold_restart(cluster, &[target], fault).await?
        }
        FaultKind::PowerCutLeader => {
            let target = any_leader()?;
            power_cut_hold_restart(cluster, &[target], fault).await?
        }
        FaultKind::PowerCutMinority => {
            let first = any_leader()?;
            let mut rest = others(first);
            rng.shuffle(&mut rest);
            let mut targets = vec![first];
            targets.extend(
                rest.into_iter()
                    .take((ids.len().saturating_sub(1) / 2).saturating_sub(1)),
            );
            power_cut_hold_restart(cluster, &targets, fault).await?
        }
        FaultKind::PowerCutAll => power_cut_hold_restart(cluster, &ids, fault).await?,
        FaultKind::DiskLowLeader => {
            disk_low_hold_restore(cluster, &[any_leader()?], leader, fault).await?
        }
        FaultKind::DiskLowFollower => {
            let target = follower(&mut rng)?;
            disk_low_hold_restore(cluster, &[target], leader, fault).await?
        }
        FaultKind::DiskLowAll => disk_low_hold_restore(cluster, &ids, leader, fault).await?,
        FaultKind::CorruptLogFollower => {
            let target = follower(&mut rng)?;
            corrupt_log_hold_restart(cluster, target, fault, &mut rng).await?
        }
        FaultKind::CorruptLogLeader => {
            let target = any_leader()?;
            corrupt_log_hold_restart(cluster, target, fault, &mut rng).await?
        }
        FaultKind::CorruptSnapshot => {
            let target = *rng.pick(&ids).context("no nodes")?;
            let data_dir = cluster.data_dir(target)?;
            let damaged = damage_snapshot(&data_dir, &mut rng)
                .with_context(|| format!("damaging node {target}'s snapshot"))?;
            tokio::time::sleep(fault.hold).await;
            match damaged {
                Some(file) => format!(
                    "flipped a bit of node {target}'s snapshot {}",
                    file.display()
                ),
                None => format!("node {target} has no snapshot to damage"),
            }
        }
        FaultKind::CorruptState => {
            let target = *rng.pick(&ids).context("no nodes")?;
            corrupt_state_hold_restart(cluster, target, fault, &mut rng).await?
        }
        FaultKind::BadWriteLog => {
            let target = *rng.pick(&ids).context("no nodes")?;
            bad_write_cut_restart(cluster, target, fault, &mut rng).await?
        }
        FaultKind::ClockAheadLeader => {
            clock_hold_reset(cluster, &[any_leader()?], "+8d", fault.hold).await?
        }
        FaultKind::ClockBehindLeader => {
            clock_hold_reset(cluster, &[any_leader()?], "-1d", fault.hold).await?
        }
        FaultKind::ClockDriftLeader => {
            clock_drift_reset(cluster, any_leader()?, fault.hold).await?
        }
        FaultKind::ClockAheadRestart => {
            let target = any_leader()?;
            cluster.kill(target).await?;
            cluster.set_clock(target, "+8d")?;
            cluster
                .spawn(target)
                .await
                .with_context(|| format!("restart of node {target} with its clock 8 days ahead"))?;
            tokio::time::sleep(fault.hold).await;
            cluster.set_clock(target, "+0")?;
            format!(
                "restarted node {target} with its clock 8 days ahead, for {:?}",
                fault.hold
            )
        }
        FaultKind::ClockAheadMajority => {
            let first = any_leader()?;
            let mut rest = others(first);
            rng.shuffle(&mut rest);
            let mut targets = vec![first];
            targets.extend(rest.into_iter().take(ids.len() / 2));
            clock_hold_reset(cluster, &targets, "+8d", fault.hold).await?
        }
    };
    Ok(match leader {
        Some(_) => done,
        None => format!("{done} (no leader was known)"),
    })
}

/// How a partition kind cuts the links it cuts (the black holes are silent, the others
/// refused), and the word for it in the event line.
fn cut_of(kind: FaultKind) -> (CutKind, &'static str) {
    match kind {
        FaultKind::BlackholeLeader
        | FaultKind::BlackholeFollower
        | FaultKind::BlackholeLeaderSend
        | FaultKind::BlackholeLeaderReceive => (CutKind::Silent, "black-holed"),
        FaultKind::IsolateLeader | FaultKind::IsolateFollower => (CutKind::Refused, "isolated"),
        _ => (CutKind::Refused, "cut"),
    }
}

/// Moves the wall clocks of `targets` to `offset` (libfaketime's notation) for the hold, then
/// back.
async fn clock_hold_reset(
    cluster: &mut Cluster,
    targets: &[u64],
    offset: &str,
    hold: Duration,
) -> anyhow::Result<String> {
    for &id in targets {
        cluster.set_clock(id, offset)?;
    }
    tokio::time::sleep(hold).await;
    for &id in targets {
        cluster.set_clock(id, "+0")?;
    }
    Ok(format!(
        "stepped the clocks of {targets:?} {offset} for {hold:?}"
    ))
}

/// How often a drifting clock is moved on, and by how much.
const DRIFT_STEP: Duration = Duration::from_millis(100);
const DRIFT_PER_STEP_SECS: u64 = 4 * 3600;

/// Lets `target`'s wall clock run fast for the hold (see `FaultKind::ClockDriftLeader`), then
/// sets it right.
async fn clock_drift_reset(
    cluster: &mut Cluster,
    target: u64,
    hold: Duration,
) -> anyhow::Result<String> {
    let steps = (hold.as_millis() / DRIFT_STEP.as_millis()).max(1) as u64;
    for step in 1..=steps {
        cluster.set_clock(target, &format!("+{}s", step * DRIFT_PER_STEP_SECS))?;
        tokio::time::sleep(DRIFT_STEP).await;
    }
    cluster.set_clock(target, "+0")?;
    Ok(format!(
        "let node {target}'s clock drift {}h ahead over {hold:?}",
        steps * DRIFT_PER_STEP_SECS / 3600
    ))
}

async fn kill_hold_restart(
    cluster: &mut Cluster,
    targets: &[u64],
    hold: Duration,
) -> anyhow::Result<String> {
    for &id in targets {
        cluster.kill(id).await?;
    }
    tokio::time::sleep(hold).await;
    for &id in targets {
        cluster
            .spawn(id)
            .await
            .with_context(|| format!("restart of node {id} after SIGKILL"))?;
    }
    Ok(format!("SIGKILLed and restarted {targets:?}"))
}

/// Cuts the power of `targets` at one instant (each disk drops what was not fsynced; the
/// torn write, if the fault has one, hits each of them), kills their processes, and after the
/// hold powers them on and restarts them.
async fn power_cut_hold_restart(
    cluster: &mut Cluster,
    targets: &[u64],
    fault: &Fault,
) -> anyhow::Result<String> {
    let cut = match fault.torn {
        Some(skip) if skip % 2 == 1 => Cut::TornOutOfOrder { skip },
        Some(keep) => Cut::TornLastWrite { keep },
        None => Cut::Clean,
    };
    let dropped = cluster.power_cut(targets, cut).await?;
    tokio::time::sleep(fault.hold).await;
    for &id in targets {
        cluster.power_on(id)?;
        cluster
            .spawn(id)
            .await
            .with_context(|| format!("restart of node {id} after a power cut"))?;
    }
    Ok(format!(
        "cut the power of {targets:?} ({} unsynced bytes dropped, {} directory entries lost{})",
        dropped.dropped_bytes,
        dropped.dropped_entries,
        match fault.torn {
            Some(_) => format!(", {} bytes of a torn write kept", dropped.torn_bytes),
            None => String::new(),
        }
    ))
}

/// How long a node whose log was damaged may take to be whole again after its restart.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// Kills `target`, damages one record of its log that has a later append after it (how, drawn
/// from `rng`), and after the hold restarts it: it must start (it has peers to repair from) and
/// be whole again, its `log_repair` gone from its status, within [`REPAIR_TIMEOUT`].
async fn corrupt_log_hold_restart(
    cluster: &mut Cluster,
    target: u64,
    fault: &Fault,
    rng: &mut SplitMix64,
) -> anyhow::Result<String> {
    cluster.kill(target).await?;
    let how = *rng.pick(&RecordDamage::ALL).context("no damage kinds")?;
    let data_dir = cluster.data_dir(target)?;
    let damaged =
        damage_log(&data_dir, how, rng).with_context(|| format!("damaging node {target}'s log"))?;
    tokio::time::sleep(fault.hold).await;
    cluster
        .spawn(target)
        .await
        .with_context(|| format!("restart of node {target} after damage to its log"))?;
    wait_repaired(cluster, target).await?;
    Ok(match damaged {
        Some(record) => format!(
            "node {target}: {}; it repaired from the leader",
            how.describe(&record)
        ),
        None => format!("node {target}'s log had no record with a later append to damage"),
    })
}

/// Kills `target`, damages its `state.redb` (and, for an even `fault.pick`, its snapshot, so
/// that only the cluster can rebuild its state), restarts it after the hold and waits until it
/// has repaired.
async fn corrupt_state_hold_restart(
    cluster: &mut Cluster,
    target: u64,
    fault: &Fault,
    rng: &mut SplitMix64,
) -> anyhow::Result<String> {
    cluster.kill(target).await?;
    let how = *rng.pick(&StateDamage::ALL).context("no damage kinds")?;
    let data_dir = cluster.data_dir(target)?;
    damage_state(&data_dir, how).with_context(|| format!("damaging node {target}'s state"))?;
    let snapshot_too = if fault.pick.is_multiple_of(2) {
        damage_snapshot(&data_dir, rng)
            .with_context(|| format!("damaging node {target}'s snapshot"))?
            .is_some()
    } else {
        false
    };
    tokio::time::sleep(fault.hold).await;
    cluster
        .spawn(target)
        .await
        .with_context(|| format!("restart of node {target} after damage to its state"))?;
    wait_repaired(cluster, target).await?;
    Ok(format!(
        "node {target}: state.redb {}{}; it is back in service",
        how.name(),
        if snapshot_too {
            ", and a bit of its snapshot flipped"
        } else {
            ""
        }
    ))
}

/// How long a bad write may wait for an append of the log to take it.
const BAD_WRITE_WAIT: Duration = Duration::from_secs(10);

/// Arms a bad write (lost, or misdirected up to 4 KiB back: drawn from `rng`) on `target`'s
/// disk for its log's next append, waits until an append took it (with later appends after it
/// or none: as the last append, only the log's synced mark tells it from a torn write), cuts
/// the node's power, which shows the damage, and restarts it after the hold: it must repair
/// from the others and be back in service. With no append within [`BAD_WRITE_WAIT`] the fault
/// is disarmed and nothing is cut.
async fn bad_write_cut_restart(
    cluster: &mut Cluster,
    target: u64,
    fault: &Fault,
    rng: &mut SplitMix64,
) -> anyhow::Result<String> {
    let bad = if rng.between(0, 1) == 0 {
        BadWrite::Lost
    } else {
        BadWrite::Misdirected {
            back: rng.between(1, 4096),
        }
    };
    // Half the time the bad append is the last one at the cut; else others follow it.
    let later_appends = u32::try_from(rng.between(0, 1)).unwrap_or(0);
    let disk = cluster.disk(target)?;
    disk.arm_bad_write(bad, ".seg");
    let deadline = tokio::time::Instant::now() + BAD_WRITE_WAIT;
    let taken = loop {
        match disk.bad_write() {
            Some(taken) if taken.later_syncs >= later_appends => break Some(taken),
            _ if tokio::time::Instant::now() > deadline => break None,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let Some(taken) = taken else {
        disk.disarm_bad_write();
        return Ok(format!(
            "node {target}: no append of its log took a {bad:?} within {BAD_WRITE_WAIT:?}; \
             disarmed"
        ));
    };
    let cut = cluster.power_cut(&[target], Cut::Clean).await?;
    tokio::time::sleep(fault.hold).await;
    cluster.power_on(target)?;
    cluster
        .spawn(target)
        .await
        .with_context(|| format!("restart of node {target} after a bad write"))?;
    wait_repaired(cluster, target).await?;
    Ok(format!(
        "node {target}: {bad:?} of {} bytes at {} of {:?}, at least {} appends after it \
         (shown by the power cut: {}); it is back in service",
        taken.len, taken.offset, taken.file, taken.later_syncs, cut.bad_writes
    ))
}

/// Waits until `target` is back in service: no log repair pending in its status, and `/readyz`
/// 200.
async fn wait_repaired(cluster: &Cluster, target: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + REPAIR_TIMEOUT;
    loop {
        let status = cluster.status(target).await;
        if status
            .as_ref()
            .is_some_and(|status| status["node"]["log_repair"].is_null())
            && cluster.ready(target).await
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {target} did not repair within {REPAIR_TIMEOUT:?}: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Free space a disk-low fault leaves: far below `raft.min_free_disk_mib` (1 GiB by default),
/// and room enough for what a node writes while it refuses writes (votes, applies of entries
/// it took before).
const LOW_DISK_FREE: u64 = 64 << 20;

/// Leaves `targets` [`LOW_DISK_FREE`] of disk for the hold, then lifts the limit. Says which
/// node led before and at the end of the hold: a leader low on disk hands its leadership to a
/// voter with room, if there is one.
async fn disk_low_hold_restore(
    cluster: &mut Cluster,
    targets: &[u64],
    leader_before: Option<u64>,
    fault: &Fault,
) -> anyhow::Result<String> {
    for &id in targets {
        cluster.limit_free_space(id, Some(LOW_DISK_FREE))?;
    }
    tokio::time::sleep(fault.hold).await;
    let leader_after = cluster.leader().await;
    for &id in targets {
        cluster.limit_free_space(id, None)?;
    }
    let name = |leader: Option<u64>| leader.map_or("none".to_string(), |id| id.to_string());
    Ok(format!(
        "left {targets:?} {} MiB of disk (leader {} -> {})",
        LOW_DISK_FREE >> 20,
        name(leader_before),
        name(leader_after)
    ))
}

async fn pause_hold_resume(
    cluster: &mut Cluster,
    id: u64,
    hold: Duration,
) -> anyhow::Result<String> {
    cluster.signal(id, "-STOP")?;
    tokio::time::sleep(hold).await;
    cluster.signal(id, "-CONT")?;
    Ok(format!("SIGSTOPped node {id} for {hold:?}"))
}

async fn hold_heal(cluster: &Cluster, hold: Duration) {
    tokio::time::sleep(hold).await;
    cluster.network.heal();
}

/// A new node joins as a learner, is promoted to voter, then `leaving` is removed and stopped
/// for good: the voter count is unchanged, the membership is not.
async fn replace(cluster: &mut Cluster, leaving: u64) -> anyhow::Result<String> {
    let joining = cluster.next_id();
    cluster.add_node(joining, false).await?;
    // The join makes it a learner; wait until the leader lists it.
    let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
    loop {
        if let Some(leader) = cluster.leader().await
            && let Some(status) = cluster.status(leader).await
            && status["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["id"] == joining))
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("node {joining} did not become a learner within {MEMBERSHIP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin_until_ok(cluster, "/cluster/promote", joining).await?;
    admin_until_ok(cluster, "/cluster/remove", leaving).await?;
    cluster.retire(leaving).await?;
    Ok(format!(
        "node {joining} joined as a learner and was promoted; node {leaving} was removed"
    ))
}

/// Sends an admin mutation to the current leader until it answers 200 (a leader change or a
/// not-yet-caught-up learner answers 503), within the bound.
async fn admin_until_ok(cluster: &Cluster, path: &str, node_id: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Some(leader) = cluster.leader().await {
            match cluster
                .admin_post(leader, path, json!({ "node_id": node_id }))
                .await
            {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{path} of node {node_id} did not succeed within {MEMBERSHIP_TIMEOUT:?}: {last}")
}
