//! The RDS and Aurora snapshot providers.
//!
//! * Fault tests run against an in-memory fake [`RdsApi`] (throttling, stuck snapshots, failed
//!   and interrupted restores) with tiny deadlines; they need nothing installed.
//! * The moto tests drive the real aws-sdk-rds client against moto's server. They are ignored
//!   by default; run them with
//!   `SLUICE_MOTO_SERVER=$(bash scripts/ci-moto.sh) cargo test --test rds -- --ignored`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use sluice::config::{Environment, ProviderConfig, SnapshotConfig};
use sluice::snapshot::rds::{
    ApiError, ClusterInfo, ClusterMember, InstanceInfo, RdsApi, RdsSnapshots, RdsTarget,
    SnapshotInfo,
};
use sluice::snapshot::{NoHazards, Progress, SnapshotKind, SnapshotProvider};

const RUN: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const TOKEN: &str = "7c9e66797425";

// ---------------------------------------------------------------------------------------------
// A fake RDS
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct State {
    instances: BTreeMap<String, InstanceInfo>,
    clusters: BTreeMap<String, ClusterInfo>,
    snapshots: BTreeMap<String, SnapshotInfo>,
    cluster_snapshots: BTreeMap<String, SnapshotInfo>,
    /// Every call that reached the fake: "Action identifier".
    log: Vec<String>,
    /// Remaining throttling answers per action, and the error code to throttle with.
    throttle: HashMap<&'static str, (usize, Option<&'static str>, Option<u16>)>,
    /// Describe polls a new snapshot stays `creating` (None: forever).
    snapshot_polls: Option<usize>,
    /// The status a snapshot ends in instead of `available`.
    snapshot_ends: Option<&'static str>,
    /// Describe polls a restored or created instance/cluster stays `creating`.
    create_polls: usize,
    /// Countdown of `creating` polls per resource key.
    countdown: HashMap<String, Option<usize>>,
    /// The next restore call fails with this.
    fail_restore: Option<ApiError>,
    /// The next restore call never answers (the process "crashes" while it is in flight).
    hang_restore: bool,
    /// The next restore call is carried out, but its answer is lost (a gateway timeout).
    lose_restore_answer: bool,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

fn not_found(call: &str, id: &str, code: &str) -> ApiError {
    ApiError::new(call, id, Some(code), format!("{id} not found")).with_status(404)
}

impl Fake {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Logs the call and answers with throttling while the action has some left.
    fn enter(&self, call: &'static str, id: &str) -> Result<(), ApiError> {
        let mut st = self.state();
        st.log.push(format!("{call} {id}"));
        if let Some((left, code, status)) = st.throttle.get_mut(call) {
            if *left > 0 {
                *left -= 1;
                let mut e = ApiError::new(call, id, *code, "Rate exceeded");
                if let Some(s) = status {
                    e = e.with_status(*s);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn calls(&self, prefix: &str) -> usize {
        self.state()
            .log
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    fn deletes(&self) -> Vec<String> {
        self.state()
            .log
            .iter()
            .filter(|l| l.starts_with("Delete"))
            .cloned()
            .collect()
    }

    fn add_instance(&self, id: &str, class: &str) {
        self.state().instances.insert(
            id.to_string(),
            InstanceInfo {
                identifier: id.to_string(),
                arn: Some(format!("arn:aws:rds:us-east-1:123456789012:db:{id}")),
                status: "available".into(),
                class: Some(class.into()),
                engine: Some("postgres".into()),
                engine_version: Some("16.3".into()),
                subnet_group: Some("app-subnets".into()),
                security_groups: vec!["sg-0123".into(), "sg-0456".into()],
                parameter_group: Some("app-pg16".into()),
                multi_az: Some(true),
                publicly_accessible: Some(false),
                port: Some(5432),
                allocated_storage_gib: Some(20),
                created_at: Some(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()),
                tags: vec![("team".into(), "payments".into())],
                ..InstanceInfo::default()
            },
        );
    }

    fn add_snapshot(&self, id: &str, source: &str, status: &str, day: u32) {
        self.state().snapshots.insert(
            id.to_string(),
            SnapshotInfo {
                identifier: id.to_string(),
                source: source.to_string(),
                status: status.to_string(),
                percent_progress: Some(100),
                engine: Some("postgres".into()),
                engine_version: Some("16.3".into()),
                allocated_storage_gib: Some(20),
                created_at: Some(Utc.with_ymd_and_hms(2024, 2, day, 0, 0, 0).unwrap()),
            },
        );
    }

    fn add_cluster(&self, id: &str, members: &[(&str, &str, bool)]) {
        let mut st = self.state();
        st.clusters.insert(
            id.to_string(),
            ClusterInfo {
                identifier: id.to_string(),
                arn: Some(format!("arn:aws:rds:us-east-1:123456789012:cluster:{id}")),
                status: "available".into(),
                engine: Some("aurora-postgresql".into()),
                engine_version: Some("15.4".into()),
                subnet_group: Some("app-subnets".into()),
                security_groups: vec!["sg-0123".into()],
                parameter_group: Some("app-aurora15".into()),
                port: Some(5432),
                members: members
                    .iter()
                    .map(|(m, _, w)| ClusterMember {
                        identifier: m.to_string(),
                        writer: *w,
                    })
                    .collect(),
                allocated_storage_gib: Some(1),
                created_at: Some(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()),
                ..ClusterInfo::default()
            },
        );
        for (m, class, writer) in members {
            st.instances.insert(
                m.to_string(),
                InstanceInfo {
                    identifier: m.to_string(),
                    arn: Some(format!("arn:aws:rds:us-east-1:123456789012:db:{m}")),
                    status: "available".into(),
                    class: Some(class.to_string()),
                    engine: Some("aurora-postgresql".into()),
                    cluster: Some(id.to_string()),
                    promotion_tier: Some(if *writer { 0 } else { 1 }),
                    ..InstanceInfo::default()
                },
            );
        }
    }

    /// `creating` while the countdown of `key` runs, then `available` (or `ends`).
    fn tick(st: &mut State, key: &str, ends: &str) -> Option<String> {
        let slot = st.countdown.get_mut(key)?;
        match slot {
            None => Some("creating".into()),
            Some(0) => {
                st.countdown.remove(key);
                Some(ends.to_string())
            }
            Some(n) => {
                *n -= 1;
                Some("creating".into())
            }
        }
    }
}

#[async_trait]
impl RdsApi for Fake {
    async fn describe_instance(&self, id: &str) -> Result<Option<InstanceInfo>, ApiError> {
        self.enter("DescribeDBInstances", id)?;
        let mut st = self.state();
        if let Some(status) = Fake::tick(&mut st, &format!("db:{id}"), "available") {
            if let Some(i) = st.instances.get_mut(id) {
                i.status = status;
            }
        }
        Ok(st.instances.get(id).cloned())
    }

    async fn list_instances(&self) -> Result<Vec<InstanceInfo>, ApiError> {
        self.enter("DescribeDBInstances", "(list)")?;
        Ok(self.state().instances.values().cloned().collect())
    }

    async fn list_cluster_instances(
        &self,
        cluster_ids: &[String],
    ) -> Result<Vec<InstanceInfo>, ApiError> {
        self.enter("DescribeDBInstances", "(cluster)")?;
        Ok(self
            .state()
            .instances
            .values()
            .filter(|i| i.cluster.as_ref().is_some_and(|c| cluster_ids.contains(c)))
            .cloned()
            .collect())
    }

    async fn rename_instance(&self, id: &str, new_id: &str) -> Result<(), ApiError> {
        self.enter("ModifyDBInstance", id)?;
        let mut st = self.state();
        if st.instances.contains_key(new_id) {
            return Err(ApiError::new(
                "ModifyDBInstance",
                id,
                Some("DBInstanceAlreadyExists"),
                "exists",
            ));
        }
        let Some(mut inst) = st.instances.remove(id) else {
            return Err(not_found("ModifyDBInstance", id, "DBInstanceNotFound"));
        };
        inst.identifier = new_id.to_string();
        if let Some(c) = inst.cluster.clone() {
            if let Some(cluster) = st.clusters.get_mut(&c) {
                for m in &mut cluster.members {
                    if m.identifier == id {
                        m.identifier = new_id.to_string();
                    }
                }
            }
        }
        st.instances.insert(new_id.to_string(), inst);
        Ok(())
    }

    async fn tag_resource(&self, arn: &str, tags: &[(String, String)]) -> Result<(), ApiError> {
        self.enter("AddTagsToResource", arn)?;
        let mut st = self.state();
        if let Some(i) = st
            .instances
            .values_mut()
            .find(|i| i.arn.as_deref() == Some(arn))
        {
            i.tags.retain(|(k, _)| !tags.iter().any(|(n, _)| n == k));
            i.tags.extend(tags.iter().cloned());
        }
        Ok(())
    }

    async fn restore_instance(
        &self,
        id: &str,
        snapshot: &str,
        template: &InstanceInfo,
    ) -> Result<(), ApiError> {
        self.enter("RestoreDBInstanceFromDBSnapshot", id)?;
        let hang = std::mem::take(&mut self.state().hang_restore);
        if hang {
            std::future::pending::<()>().await;
        }
        let mut st = self.state();
        if let Some(e) = st.fail_restore.take() {
            return Err(e);
        }
        if st.instances.contains_key(id) {
            return Err(ApiError::new(
                "RestoreDBInstanceFromDBSnapshot",
                id,
                Some("DBInstanceAlreadyExists"),
                "exists",
            ));
        }
        let Some(snap) = st.snapshots.get(snapshot).cloned() else {
            return Err(not_found(
                "RestoreDBInstanceFromDBSnapshot",
                snapshot,
                "DBSnapshotNotFound",
            ));
        };
        let mut inst = template.clone();
        inst.identifier = id.to_string();
        inst.arn = Some(format!("arn:aws:rds:us-east-1:123456789012:db:{id}"));
        inst.status = "creating".into();
        inst.allocated_storage_gib = snap.allocated_storage_gib;
        inst.created_at = Some(Utc::now());
        let polls = st.create_polls;
        st.countdown.insert(format!("db:{id}"), Some(polls));
        st.instances.insert(id.to_string(), inst);
        if std::mem::take(&mut st.lose_restore_answer) {
            return Err(ApiError::new(
                "RestoreDBInstanceFromDBSnapshot",
                id,
                None,
                "operation timed out",
            )
            .with_status(504));
        }
        Ok(())
    }

    async fn create_cluster_instance(
        &self,
        id: &str,
        cluster: &str,
        engine: &str,
        template: &InstanceInfo,
    ) -> Result<(), ApiError> {
        self.enter("CreateDBInstance", id)?;
        let mut st = self.state();
        if st.instances.contains_key(id) {
            return Err(ApiError::new(
                "CreateDBInstance",
                id,
                Some("DBInstanceAlreadyExists"),
                "exists",
            ));
        }
        let Some(c) = st.clusters.get_mut(cluster) else {
            return Err(not_found(
                "CreateDBInstance",
                cluster,
                "DBClusterNotFoundFault",
            ));
        };
        let writer = c.members.is_empty();
        c.members.push(ClusterMember {
            identifier: id.to_string(),
            writer,
        });
        let inst = InstanceInfo {
            identifier: id.to_string(),
            arn: Some(format!("arn:aws:rds:us-east-1:123456789012:db:{id}")),
            status: "creating".into(),
            class: template.class.clone(),
            engine: Some(engine.to_string()),
            cluster: Some(cluster.to_string()),
            promotion_tier: template.promotion_tier,
            ..InstanceInfo::default()
        };
        let polls = st.create_polls;
        st.countdown.insert(format!("db:{id}"), Some(polls));
        st.instances.insert(id.to_string(), inst);
        Ok(())
    }

    async fn delete_instance(
        &self,
        id: &str,
        final_snapshot: Option<&str>,
    ) -> Result<(), ApiError> {
        self.enter("DeleteDBInstance", id)?;
        let mut st = self.state();
        let Some(inst) = st.instances.remove(id) else {
            return Err(not_found("DeleteDBInstance", id, "DBInstanceNotFound"));
        };
        if let Some(c) = inst.cluster.as_ref().and_then(|c| st.clusters.get_mut(c)) {
            c.members.retain(|m| m.identifier != id);
        }
        if let Some(snap) = final_snapshot {
            st.snapshots.insert(
                snap.to_string(),
                SnapshotInfo {
                    identifier: snap.to_string(),
                    source: id.to_string(),
                    status: "available".into(),
                    created_at: Some(Utc::now()),
                    allocated_storage_gib: inst.allocated_storage_gib,
                    ..SnapshotInfo::default()
                },
            );
        }
        Ok(())
    }

    async fn describe_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>, ApiError> {
        self.enter("DescribeDBSnapshots", id)?;
        let mut st = self.state();
        let ends = st.snapshot_ends.unwrap_or("available");
        if let Some(status) = Fake::tick(&mut st, &format!("snap:{id}"), ends) {
            if let Some(s) = st.snapshots.get_mut(id) {
                if status == "creating" {
                    s.percent_progress = Some((s.percent_progress.unwrap_or(0) + 20).min(90));
                } else {
                    s.percent_progress = Some(100);
                }
                s.status = status;
            }
        }
        Ok(st.snapshots.get(id).cloned())
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, ApiError> {
        self.enter("DescribeDBSnapshots", "(manual)")?;
        Ok(self.state().snapshots.values().cloned().collect())
    }

    async fn create_snapshot(&self, id: &str, instance: &str) -> Result<(), ApiError> {
        self.enter("CreateDBSnapshot", id)?;
        let mut st = self.state();
        if st.snapshots.contains_key(id) {
            return Err(ApiError::new(
                "CreateDBSnapshot",
                id,
                Some("DBSnapshotAlreadyExists"),
                "exists",
            ));
        }
        let Some(inst) = st.instances.get(instance).cloned() else {
            return Err(not_found(
                "CreateDBSnapshot",
                instance,
                "DBInstanceNotFound",
            ));
        };
        let polls = st.snapshot_polls;
        st.countdown.insert(format!("snap:{id}"), polls);
        st.snapshots.insert(
            id.to_string(),
            SnapshotInfo {
                identifier: id.to_string(),
                source: instance.to_string(),
                status: "creating".into(),
                percent_progress: Some(0),
                engine: inst.engine.clone(),
                engine_version: inst.engine_version.clone(),
                allocated_storage_gib: inst.allocated_storage_gib,
                created_at: Some(Utc::now()),
            },
        );
        Ok(())
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), ApiError> {
        self.enter("DeleteDBSnapshot", id)?;
        match self.state().snapshots.remove(id) {
            Some(_) => Ok(()),
            None => Err(not_found("DeleteDBSnapshot", id, "DBSnapshotNotFound")),
        }
    }

    async fn describe_cluster(&self, id: &str) -> Result<Option<ClusterInfo>, ApiError> {
        self.enter("DescribeDBClusters", id)?;
        let mut st = self.state();
        if let Some(status) = Fake::tick(&mut st, &format!("cluster:{id}"), "available") {
            if let Some(c) = st.clusters.get_mut(id) {
                c.status = status;
            }
        }
        Ok(st.clusters.get(id).cloned())
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterInfo>, ApiError> {
        self.enter("DescribeDBClusters", "(list)")?;
        Ok(self.state().clusters.values().cloned().collect())
    }

    async fn rename_cluster(&self, id: &str, new_id: &str) -> Result<(), ApiError> {
        self.enter("ModifyDBCluster", id)?;
        let mut st = self.state();
        let Some(mut c) = st.clusters.remove(id) else {
            return Err(not_found("ModifyDBCluster", id, "DBClusterNotFoundFault"));
        };
        c.identifier = new_id.to_string();
        for i in st.instances.values_mut() {
            if i.cluster.as_deref() == Some(id) {
                i.cluster = Some(new_id.to_string());
            }
        }
        st.clusters.insert(new_id.to_string(), c);
        Ok(())
    }

    async fn restore_cluster(
        &self,
        id: &str,
        snapshot: &str,
        template: &ClusterInfo,
    ) -> Result<(), ApiError> {
        self.enter("RestoreDBClusterFromSnapshot", id)?;
        let mut st = self.state();
        if let Some(e) = st.fail_restore.take() {
            return Err(e);
        }
        if !st.cluster_snapshots.contains_key(snapshot) {
            return Err(not_found(
                "RestoreDBClusterFromSnapshot",
                snapshot,
                "DBClusterSnapshotNotFoundFault",
            ));
        }
        let mut c = template.clone();
        c.identifier = id.to_string();
        c.status = "creating".into();
        c.members.clear();
        c.created_at = Some(Utc::now());
        let polls = st.create_polls;
        st.countdown.insert(format!("cluster:{id}"), Some(polls));
        st.clusters.insert(id.to_string(), c);
        Ok(())
    }

    async fn delete_cluster(&self, id: &str, final_snapshot: Option<&str>) -> Result<(), ApiError> {
        self.enter("DeleteDBCluster", id)?;
        let mut st = self.state();
        let Some(c) = st.clusters.get(id).cloned() else {
            return Err(not_found("DeleteDBCluster", id, "DBClusterNotFoundFault"));
        };
        if !c.members.is_empty() {
            return Err(ApiError::new(
                "DeleteDBCluster",
                id,
                Some("InvalidDBClusterStateFault"),
                "cluster has members",
            ));
        }
        st.clusters.remove(id);
        if let Some(snap) = final_snapshot {
            st.cluster_snapshots.insert(
                snap.to_string(),
                SnapshotInfo {
                    identifier: snap.to_string(),
                    source: id.to_string(),
                    status: "available".into(),
                    created_at: Some(Utc::now()),
                    ..SnapshotInfo::default()
                },
            );
        }
        Ok(())
    }

    async fn describe_cluster_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>, ApiError> {
        self.enter("DescribeDBClusterSnapshots", id)?;
        let mut st = self.state();
        let ends = st.snapshot_ends.unwrap_or("available");
        if let Some(status) = Fake::tick(&mut st, &format!("csnap:{id}"), ends) {
            if let Some(s) = st.cluster_snapshots.get_mut(id) {
                s.status = status;
            }
        }
        Ok(st.cluster_snapshots.get(id).cloned())
    }

    async fn list_cluster_snapshots(&self) -> Result<Vec<SnapshotInfo>, ApiError> {
        self.enter("DescribeDBClusterSnapshots", "(manual)")?;
        Ok(self.state().cluster_snapshots.values().cloned().collect())
    }

    async fn create_cluster_snapshot(&self, id: &str, cluster: &str) -> Result<(), ApiError> {
        self.enter("CreateDBClusterSnapshot", id)?;
        let mut st = self.state();
        if st.cluster_snapshots.contains_key(id) {
            return Err(ApiError::new(
                "CreateDBClusterSnapshot",
                id,
                Some("DBClusterSnapshotAlreadyExistsFault"),
                "exists",
            ));
        }
        let Some(c) = st.clusters.get(cluster).cloned() else {
            return Err(not_found(
                "CreateDBClusterSnapshot",
                cluster,
                "DBClusterNotFoundFault",
            ));
        };
        let polls = st.snapshot_polls;
        st.countdown.insert(format!("csnap:{id}"), polls);
        st.cluster_snapshots.insert(
            id.to_string(),
            SnapshotInfo {
                identifier: id.to_string(),
                source: cluster.to_string(),
                status: "creating".into(),
                engine: c.engine.clone(),
                engine_version: c.engine_version.clone(),
                allocated_storage_gib: c.allocated_storage_gib,
                created_at: Some(Utc::now()),
                ..SnapshotInfo::default()
            },
        );
        Ok(())
    }

    async fn delete_cluster_snapshot(&self, id: &str) -> Result<(), ApiError> {
        self.enter("DeleteDBClusterSnapshot", id)?;
        match self.state().cluster_snapshots.remove(id) {
            Some(_) => Ok(()),
            None => Err(not_found(
                "DeleteDBClusterSnapshot",
                id,
                "DBClusterSnapshotNotFoundFault",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn update(&self, message: &str) {
        self.0.lock().unwrap().push(message.to_string());
    }
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Parses an environment file the way sluice does and returns its `[snapshot]` section.
fn snapshot_config(provider_lines: &str) -> (Environment, SnapshotConfig) {
    let text = format!("url_env = \"DATABASE_URL\"\n[snapshot]\n{provider_lines}\n");
    let root = Path::new("/nonexistent-project");
    let env = Environment::parse("prod", &root.join("environments/prod.toml"), &text, root)
        .expect("environment file parses");
    let config = env.snapshot.clone().expect("has [snapshot]");
    (env, config)
}

/// An instance provider over `fake` with the tiny waits of an environment file.
fn instance_provider(fake: &Fake) -> RdsSnapshots {
    let (_, config) = snapshot_config(
        "provider = \"rds\"\ninstance_id = \"prod-db\"\ntimeout = \"300ms\"\npoll_interval = \"10ms\"",
    );
    RdsSnapshots::with_api(
        Box::new(fake.clone()),
        RdsTarget::Instance("prod-db".into()),
        config.timeout,
        config.poll_interval,
    )
}

fn cluster_provider(fake: &Fake) -> RdsSnapshots {
    let (_, config) = snapshot_config(
        "provider = \"rds-cluster\"\ncluster_id = \"prod-aurora\"\ntimeout = \"300ms\"\npoll_interval = \"10ms\"",
    );
    RdsSnapshots::with_api(
        Box::new(fake.clone()),
        RdsTarget::Cluster("prod-aurora".into()),
        config.timeout,
        config.poll_interval,
    )
}

fn snap_name() -> String {
    format!("sluice-prod-db-{TOKEN}")
}

fn preserved() -> String {
    format!("prod-db-failed-{TOKEN}")
}

/// A fake with the environment's instance and an available snapshot of it for `RUN`.
fn fake_with_snapshot() -> Fake {
    let fake = Fake::default();
    fake.add_instance("prod-db", "db.r6g.large");
    fake.add_snapshot(&snap_name(), "prod-db", "available", 1);
    fake
}

// ---------------------------------------------------------------------------------------------
// Fault tests (fake RdsApi)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_waits_for_the_snapshot_and_reports_progress() {
    let fake = Fake::default();
    fake.add_instance("prod-db", "db.t4g.micro");
    fake.state().snapshot_polls = Some(3);
    let provider = instance_provider(&fake);
    assert_eq!(provider.kind(), "rds");
    assert_eq!(provider.snapshot_name(RUN), snap_name());

    let progress = Recorder::default();
    let snap = provider
        .create(RUN, &progress, &NoHazards)
        .await
        .expect("create");
    assert_eq!(snap.name, snap_name());
    assert_eq!(snap.kind, SnapshotKind::Snapshot);
    assert_eq!(snap.status, "available");
    assert_eq!(snap.run.as_deref(), Some(TOKEN));
    assert_eq!(snap.size_bytes, Some(20 * 1024 * 1024 * 1024));
    let lines = progress.lines();
    assert!(
        lines.iter().any(
            |l| l.starts_with(&format!("snapshot {}: creating, ", snap_name())) && l.contains('%')
        ),
        "{lines:?}"
    );
    assert_eq!(fake.calls("CreateDBSnapshot"), 1);
}

#[tokio::test]
async fn throttled_calls_are_retried_until_they_succeed() {
    let fake = fake_with_snapshot();
    {
        let mut st = fake.state();
        st.snapshots.clear();
        st.snapshot_polls = Some(1);
        st.throttle
            .insert("DescribeDBSnapshots", (2, Some("Throttling"), Some(400)));
        st.throttle.insert(
            "CreateDBSnapshot",
            (2, Some("ThrottlingException"), Some(400)),
        );
        st.throttle.insert(
            "DescribeDBInstances",
            (2, Some("RequestLimitExceeded"), Some(503)),
        );
        st.throttle.insert("ModifyDBInstance", (1, None, Some(429)));
        st.throttle.insert(
            "RestoreDBInstanceFromDBSnapshot",
            (2, Some("Throttling"), Some(400)),
        );
        st.throttle
            .insert("DeleteDBSnapshot", (1, Some("Throttling"), Some(400)));
    }
    let provider = instance_provider(&fake);
    let snap = provider
        .create(RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("create despite throttling");
    assert_eq!(snap.status, "available");
    assert_eq!(
        fake.calls("CreateDBSnapshot"),
        3,
        "two throttled attempts, then one that worked"
    );
    assert_eq!(fake.state().snapshots.len(), 1, "exactly one snapshot");

    let restored = provider
        .restore(&snap.name, RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("restore despite throttling");
    assert_eq!(restored.preserved_as, preserved());
    assert_eq!(fake.calls("RestoreDBInstanceFromDBSnapshot"), 3);
    assert_eq!(fake.calls("ModifyDBInstance"), 2);
    {
        let st = fake.state();
        assert_eq!(st.instances["prod-db"].status, "available");
        assert!(st.instances.contains_key(&preserved()));
    }
    let listed = provider.list().await.expect("list");
    assert_eq!(listed.len(), 2);
    provider
        .delete(&snap.name)
        .await
        .expect("delete despite throttling");
    assert!(fake.state().snapshots.is_empty());
}

#[tokio::test]
async fn throttling_past_the_deadline_is_a_clear_error_and_changes_nothing() {
    let fake = fake_with_snapshot();
    fake.state().throttle.insert(
        "ModifyDBInstance",
        (usize::MAX, Some("Throttling"), Some(400)),
    );
    let provider = instance_provider(&fake);
    let err = provider
        .restore(&snap_name(), RUN, &Recorder::default(), &NoHazards)
        .await
        .expect_err("throttled until the deadline")
        .to_string();
    for needle in [
        "ModifyDBInstance",
        "prod-db",
        "Throttling",
        "Rate exceeded",
        "300ms",
        "Nothing was changed",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    assert!(!err.contains("testing"), "no credentials in errors: {err}");
    let st = fake.state();
    assert_eq!(st.instances["prod-db"].status, "available");
    assert!(!st.instances.contains_key(&preserved()));
}

#[tokio::test]
async fn snapshot_stuck_creating_past_the_deadline_is_kept_and_named() {
    let fake = Fake::default();
    fake.add_instance("prod-db", "db.t4g.micro");
    fake.state().snapshot_polls = None; // never finishes
    let provider = instance_provider(&fake);
    let started = std::time::Instant::now();
    let err = provider
        .create(RUN, &Recorder::default(), &NoHazards)
        .await
        .expect_err("stuck snapshot")
        .to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline held"
    );
    for needle in [
        snap_name().as_str(),
        "still `creating",
        "300ms",
        "was not deleted",
        "aws rds delete-db-snapshot --db-snapshot-identifier",
        "was not changed",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    assert!(
        fake.deletes().is_empty(),
        "nothing deleted: {:?}",
        fake.deletes()
    );
    assert_eq!(fake.calls("ModifyDBInstance"), 0, "instance untouched");
    let st = fake.state();
    assert_eq!(
        st.snapshots[&snap_name()].status,
        "creating",
        "snapshot kept"
    );
    assert_eq!(st.instances["prod-db"].status, "available");
}

#[tokio::test]
async fn snapshot_that_fails_is_reported_and_kept() {
    let fake = Fake::default();
    fake.add_instance("prod-db", "db.t4g.micro");
    {
        let mut st = fake.state();
        st.snapshot_polls = Some(1);
        st.snapshot_ends = Some("failed");
    }
    let provider = instance_provider(&fake);
    let err = provider
        .create(RUN, &Recorder::default(), &NoHazards)
        .await
        .expect_err("failed snapshot")
        .to_string();
    assert!(
        err.contains(&snap_name()) && err.contains("`failed`"),
        "{err}"
    );
    assert!(err.contains("did not delete"), "{err}");
    assert!(fake.deletes().is_empty());
    assert!(fake.state().snapshots.contains_key(&snap_name()));
}

#[tokio::test]
async fn create_retried_with_the_same_run_makes_exactly_one_snapshot() {
    let fake = Fake::default();
    fake.add_instance("prod-db", "db.t4g.micro");
    fake.state().snapshot_polls = None;
    let provider = instance_provider(&fake);
    // First attempt: the snapshot does not finish in time (like a crash while waiting).
    provider
        .create(RUN, &Recorder::default(), &NoHazards)
        .await
        .expect_err("times out");
    // It finishes in the background; the retry of the same run finds it.
    {
        let mut st = fake.state();
        st.countdown
            .insert(format!("snap:{}", snap_name()), Some(2));
    }
    let again = provider
        .create(RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("the retry waits for the same snapshot");
    assert_eq!(again.name, snap_name());
    let third = provider
        .create(RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("a third call returns it at once");
    assert_eq!(third.name, snap_name());
    assert_eq!(fake.calls("CreateDBSnapshot"), 1);
    assert_eq!(fake.state().snapshots.len(), 1);
}

#[tokio::test]
async fn restore_keeps_the_old_instance_and_copies_its_settings() {
    let fake = fake_with_snapshot();
    fake.state().create_polls = 3;
    let provider = instance_provider(&fake);
    let progress = Recorder::default();
    let restored = provider
        .restore(&snap_name(), RUN, &progress, &NoHazards)
        .await
        .expect("restore");
    assert_eq!(restored.snapshot, snap_name());
    assert_eq!(restored.preserved_as, preserved());
    let st = fake.state();
    let new = &st.instances["prod-db"];
    let old = &st.instances[&preserved()];
    assert_eq!(new.status, "available");
    assert_eq!(new.class.as_deref(), Some("db.r6g.large"));
    assert_eq!(new.subnet_group.as_deref(), Some("app-subnets"));
    assert_eq!(new.security_groups, vec!["sg-0123", "sg-0456"]);
    assert_eq!(new.parameter_group.as_deref(), Some("app-pg16"));
    assert_eq!(new.multi_az, Some(true));
    assert_eq!(new.publicly_accessible, Some(false));
    assert_eq!(old.status, "available");
    assert!(st.log.iter().all(|l| !l.starts_with("Delete")));
    drop(st);
    assert!(progress
        .lines()
        .iter()
        .any(|l| l.contains(&format!("instance prod-db: restoring from {}", snap_name()))));
}

#[tokio::test]
async fn failed_restore_renames_the_instance_back_and_deletes_nothing() {
    let fake = fake_with_snapshot();
    fake.state().fail_restore = Some(
        ApiError::new(
            "RestoreDBInstanceFromDBSnapshot",
            "prod-db",
            Some("InsufficientDBInstanceCapacity"),
            "Cannot create a database instance because there is no capacity",
        )
        .with_status(400),
    );
    let provider = instance_provider(&fake);
    let err = provider
        .restore(&snap_name(), RUN, &Recorder::default(), &NoHazards)
        .await
        .expect_err("restore fails")
        .to_string();
    for needle in [
        "RestoreDBInstanceFromDBSnapshot",
        "InsufficientDBInstanceCapacity",
        "renamed back to prod-db",
        "available again",
        "Nothing was deleted",
        preserved().as_str(),
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    assert!(fake.deletes().is_empty());
    let st = fake.state();
    let inst = &st.instances["prod-db"];
    assert_eq!(inst.status, "available");
    assert_eq!(inst.class.as_deref(), Some("db.r6g.large"));
    assert_eq!(
        inst.tags,
        vec![("team".to_string(), "payments".to_string())]
    );
    assert!(!st.instances.contains_key(&preserved()));
    assert!(st.snapshots.contains_key(&snap_name()));
}

#[tokio::test]
async fn a_restore_whose_answer_was_lost_is_not_undone() {
    let fake = fake_with_snapshot();
    {
        let mut st = fake.state();
        st.lose_restore_answer = true;
        st.create_polls = 2;
    }
    let provider = instance_provider(&fake);
    let restored = provider
        .restore(&snap_name(), RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("the restore went through although its answer was lost");
    assert_eq!(restored.preserved_as, preserved());
    assert_eq!(fake.calls("ModifyDBInstance"), 1, "not renamed back");
    let st = fake.state();
    assert_eq!(st.instances["prod-db"].status, "available");
    assert!(st.instances.contains_key(&preserved()));
}

#[tokio::test]
async fn restore_resumes_after_a_crash_between_rename_and_restore() {
    let fake = fake_with_snapshot();
    fake.state().hang_restore = true;
    let provider = instance_provider(&fake);
    // The first attempt renames the instance, then "crashes" while the restore call is in
    // flight (the future is dropped).
    let first = tokio::time::timeout(
        Duration::from_millis(150),
        provider.restore(&snap_name(), RUN, &Recorder::default(), &NoHazards),
    )
    .await;
    assert!(first.is_err(), "the first attempt was cut off");
    {
        let st = fake.state();
        assert!(!st.instances.contains_key("prod-db"));
        assert!(st.instances.contains_key(&preserved()));
    }
    // A new process resumes with the same run.
    let provider = instance_provider(&fake);
    let restored = provider
        .restore(&snap_name(), RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("resumed restore");
    assert_eq!(restored.preserved_as, preserved());
    assert_eq!(fake.calls("ModifyDBInstance"), 1, "renamed once, not twice");
    assert_eq!(fake.calls("RestoreDBInstanceFromDBSnapshot"), 2);
    let st = fake.state();
    assert_eq!(st.instances["prod-db"].status, "available");
    assert_eq!(
        st.instances["prod-db"].class.as_deref(),
        Some("db.r6g.large")
    );
    assert!(st.instances.contains_key(&preserved()));
    assert!(st.log.iter().all(|l| !l.starts_with("Delete")));
}

#[tokio::test]
async fn restore_resumed_while_the_restored_instance_is_creating_just_waits() {
    let fake = fake_with_snapshot();
    fake.state().create_polls = 2;
    let provider = instance_provider(&fake);
    // State left by a crash after the restore call was accepted.
    provider
        .restore(&snap_name(), RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("first restore");
    {
        let mut st = fake.state();
        st.instances.get_mut("prod-db").unwrap().status = "creating".into();
        st.countdown.insert("db:prod-db".into(), Some(3));
        st.log.clear();
    }
    provider
        .restore(&snap_name(), RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("resumed restore");
    assert_eq!(fake.calls("ModifyDBInstance"), 0);
    assert_eq!(fake.calls("RestoreDBInstanceFromDBSnapshot"), 0);
    assert_eq!(fake.state().instances["prod-db"].status, "available");
}

#[tokio::test]
async fn restore_refuses_missing_unavailable_and_foreign_snapshots() {
    let fake = fake_with_snapshot();
    fake.add_snapshot("sluice-prod-db-creating1", "prod-db", "creating", 2);
    fake.add_snapshot("sluice-staging-db-abc", "staging-db", "available", 3);
    let provider = instance_provider(&fake);
    let missing = provider
        .restore(
            "sluice-prod-db-nosuch",
            RUN,
            &Recorder::default(),
            &NoHazards,
        )
        .await
        .expect_err("missing")
        .to_string();
    assert!(
        missing.contains("no DB snapshot named sluice-prod-db-nosuch"),
        "{missing}"
    );
    let busy = provider
        .restore(
            "sluice-prod-db-creating1",
            RUN,
            &Recorder::default(),
            &NoHazards,
        )
        .await
        .expect_err("not available")
        .to_string();
    assert!(
        busy.contains("`creating") && busy.contains("not `available`"),
        "{busy}"
    );
    let foreign = provider
        .restore(
            "sluice-staging-db-abc",
            RUN,
            &Recorder::default(),
            &NoHazards,
        )
        .await
        .expect_err("foreign")
        .to_string();
    assert!(foreign.contains("staging-db"), "{foreign}");
    assert_eq!(fake.calls("ModifyDBInstance"), 0);
    assert_eq!(fake.calls("Restore"), 0);
}

#[tokio::test]
async fn delete_takes_only_what_sluice_made_and_keeps_a_final_snapshot() {
    let fake = fake_with_snapshot();
    let provider = instance_provider(&fake);
    provider
        .restore(&snap_name(), RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("restore");
    for refused in [
        "prod-db",
        "PROD-DB",
        "other-db",
        "rds:prod-db-2024-01-01",
        "sluice-staging-db-abc",
    ] {
        let err = provider
            .delete(refused)
            .await
            .expect_err(refused)
            .to_string();
        assert!(err.contains("refusing"), "{err}");
    }
    provider
        .delete(&snap_name())
        .await
        .expect("delete snapshot");
    provider
        .delete(&snap_name())
        .await
        .expect("already gone is fine");
    provider
        .delete(&preserved())
        .await
        .expect("delete preserved copy");
    provider
        .delete(&preserved())
        .await
        .expect("already gone is fine");
    let final_snap = format!("sluice-{}", preserved());
    {
        let st = fake.state();
        assert!(st.instances.contains_key("prod-db"));
        assert!(!st.instances.contains_key(&preserved()));
        assert_eq!(st.snapshots[&final_snap].source, preserved());
        assert_eq!(
            st.log
                .iter()
                .filter(|l| l.starts_with("Delete"))
                .cloned()
                .collect::<Vec<_>>(),
            vec![
                format!("DeleteDBSnapshot {}", snap_name()),
                format!("DeleteDBInstance {}", preserved()),
            ]
        );
    }
    let listed = provider.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, final_snap);
    assert_eq!(listed[0].kind, SnapshotKind::Snapshot);
    assert_eq!(listed[0].run.as_deref(), Some(TOKEN));
}

#[tokio::test]
async fn list_shows_this_environments_snapshots_and_preserved_copies_oldest_first() {
    let fake = Fake::default();
    fake.add_instance("prod-db", "db.t4g.micro");
    fake.add_instance("prod-db-failed-aaa111", "db.t4g.micro"); // created 2024-01-01
    fake.add_instance("prod-db-2", "db.t4g.micro");
    fake.add_snapshot("sluice-prod-db-ccc333", "prod-db", "available", 5);
    fake.add_snapshot("sluice-prod-db-bbb222", "prod-db", "available", 3);
    fake.add_snapshot("sluice-prod-db-2-ddd444", "prod-db-2", "available", 4);
    fake.add_snapshot("manual-backup", "prod-db", "available", 2);
    let provider = instance_provider(&fake);
    let listed = provider.list().await.expect("list");
    let names: Vec<_> = listed.iter().map(|s| (s.name.as_str(), s.kind)).collect();
    assert_eq!(
        names,
        vec![
            ("prod-db-failed-aaa111", SnapshotKind::Preserved),
            ("sluice-prod-db-bbb222", SnapshotKind::Snapshot),
            ("sluice-prod-db-ccc333", SnapshotKind::Snapshot),
        ]
    );
    assert!(listed.iter().all(|s| s.size_bytes == Some(20 << 30)));
    assert_eq!(listed[1].run.as_deref(), Some("bbb222"));
}

#[tokio::test]
async fn cluster_restore_moves_cluster_and_instances_away_and_recreates_them() {
    let fake = Fake::default();
    fake.add_cluster(
        "prod-aurora",
        &[
            ("prod-aurora-a", "db.r6g.large", true),
            ("prod-aurora-b", "db.r6g.xlarge", false),
        ],
    );
    fake.state().create_polls = 2;
    fake.state().snapshot_polls = Some(1);
    let provider = cluster_provider(&fake);
    assert_eq!(provider.kind(), "rds-cluster");
    let snap = provider
        .create(RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("create");
    assert_eq!(snap.name, format!("sluice-prod-aurora-{TOKEN}"));
    let restored = provider
        .restore(&snap.name, RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("restore");
    let pc = format!("prod-aurora-failed-{TOKEN}");
    assert_eq!(restored.preserved_as, pc);
    {
        let st = fake.state();
        let cluster = &st.clusters["prod-aurora"];
        assert_eq!(cluster.status, "available");
        assert_eq!(cluster.parameter_group.as_deref(), Some("app-aurora15"));
        assert_eq!(
            cluster.members[0].identifier, "prod-aurora-a",
            "writer first"
        );
        assert!(cluster.members[0].writer);
        assert_eq!(
            st.instances["prod-aurora-a"].class.as_deref(),
            Some("db.r6g.large")
        );
        assert_eq!(
            st.instances["prod-aurora-b"].class.as_deref(),
            Some("db.r6g.xlarge")
        );
        assert_eq!(
            st.instances["prod-aurora-a"].cluster.as_deref(),
            Some("prod-aurora")
        );
        let old = &st.clusters[&pc];
        let mut old_members: Vec<_> = old.members.iter().map(|m| m.identifier.clone()).collect();
        old_members.sort();
        assert_eq!(
            old_members,
            vec![
                format!("prod-aurora-a-failed-{TOKEN}"),
                format!("prod-aurora-b-failed-{TOKEN}")
            ]
        );
        assert!(st.log.iter().all(|l| !l.starts_with("Delete")));
    }
    // Running it again is a no-op that reports the same result.
    let again = provider
        .restore(&snap.name, RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("idempotent");
    assert_eq!(again.preserved_as, pc);
    assert_eq!(fake.calls("RestoreDBClusterFromSnapshot"), 1);
    assert_eq!(fake.calls("CreateDBInstance"), 2);

    let listed = provider.list().await.expect("list");
    let kinds: Vec<_> = listed.iter().map(|s| (s.name.clone(), s.kind)).collect();
    assert!(
        kinds.contains(&(snap.name.clone(), SnapshotKind::Snapshot)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(pc.clone(), SnapshotKind::Preserved)),
        "{kinds:?}"
    );

    // Deleting the preserved cluster removes its instances, then the cluster with a final
    // cluster snapshot.
    provider
        .delete(&pc)
        .await
        .expect("delete preserved cluster");
    let st = fake.state();
    assert!(!st.clusters.contains_key(&pc));
    assert!(st.cluster_snapshots.contains_key(&format!("sluice-{pc}")));
    assert!(st.clusters.contains_key("prod-aurora"));
    assert!(st.instances.contains_key("prod-aurora-a"));
    assert!(st.instances.contains_key("prod-aurora-b"));
}

#[tokio::test]
async fn failed_cluster_restore_puts_cluster_and_instances_back() {
    let fake = Fake::default();
    fake.add_cluster("prod-aurora", &[("prod-aurora-a", "db.r6g.large", true)]);
    fake.state().snapshot_polls = Some(1);
    let provider = cluster_provider(&fake);
    let snap = provider
        .create(RUN, &Recorder::default(), &NoHazards)
        .await
        .expect("create");
    fake.state().fail_restore = Some(ApiError::new(
        "RestoreDBClusterFromSnapshot",
        "prod-aurora",
        Some("InvalidVPCNetworkStateFault"),
        "subnet group has no subnets",
    ));
    let err = provider
        .restore(&snap.name, RUN, &Recorder::default(), &NoHazards)
        .await
        .expect_err("restore fails")
        .to_string();
    assert!(err.contains("InvalidVPCNetworkStateFault"), "{err}");
    assert!(err.contains("renamed back to prod-aurora"), "{err}");
    assert!(err.contains("Nothing was deleted"), "{err}");
    let st = fake.state();
    assert_eq!(st.clusters["prod-aurora"].status, "available");
    assert_eq!(st.clusters.len(), 1);
    assert_eq!(
        st.instances["prod-aurora-a"].cluster.as_deref(),
        Some("prod-aurora")
    );
    assert!(st.log.iter().all(|l| !l.starts_with("Delete")));
}

// ---------------------------------------------------------------------------------------------
// moto
// ---------------------------------------------------------------------------------------------

/// A moto server of this test, killed when dropped.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let bin = std::env::var("SLUICE_MOTO_SERVER").unwrap_or_else(|_| {
            panic!(
                "SLUICE_MOTO_SERVER is not set: it must name moto's `moto_server` binary; run \
                 `export SLUICE_MOTO_SERVER=$(bash scripts/ci-moto.sh)` first"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut moto = Moto { child, port };
        let started = std::time::Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("{bin} exited with {status} before listening on port {port}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{bin} did not listen on port {port} within 60s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Static credentials for moto, set once for this test process before any client is built.
fn moto_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
    });
}

fn moto_env(moto: &Moto, provider: &str, key: &str, id: &str) -> (Environment, SnapshotConfig) {
    snapshot_config(&format!(
        "provider = \"{provider}\"\n{key} = \"{id}\"\nregion = \"us-east-1\"\n\
         endpoint_url = \"{}\"\ntimeout = \"60s\"\npoll_interval = \"50ms\"",
        moto.url()
    ))
}

/// moto takes an "automated" snapshot named `rds:<id>-<YYYY-MM-DD-HH-MM>` whenever it creates
/// an instance or cluster, and fails the create if that name exists, so re-creating an
/// identifier within the same minute (which a restore does) fails in moto — not in AWS, whose
/// automated backups are not snapshots with such names. Tests drop them before a restore.
async fn drop_moto_automated_snapshots(client: &aws_sdk_rds::Client) {
    let out = client
        .describe_db_snapshots()
        .snapshot_type("automated")
        .send()
        .await
        .expect("list automated snapshots");
    for s in out.db_snapshots() {
        if let Some(id) = s.db_snapshot_identifier() {
            client
                .delete_db_snapshot()
                .db_snapshot_identifier(id)
                .send()
                .await
                .expect("drop automated snapshot");
        }
    }
    let out = client
        .describe_db_cluster_snapshots()
        .snapshot_type("automated")
        .send()
        .await
        .expect("list automated cluster snapshots");
    for s in out.db_cluster_snapshots() {
        if let Some(id) = s.db_cluster_snapshot_identifier() {
            client
                .delete_db_cluster_snapshot()
                .db_cluster_snapshot_identifier(id)
                .send()
                .await
                .expect("drop automated cluster snapshot");
        }
    }
}

async fn instance_exists(client: &aws_sdk_rds::Client, id: &str) -> bool {
    match client
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
    {
        Ok(out) => !out.db_instances().is_empty(),
        Err(_) => false,
    }
}

async fn cluster_exists(client: &aws_sdk_rds::Client, id: &str) -> bool {
    match client
        .describe_db_clusters()
        .db_cluster_identifier(id)
        .send()
        .await
    {
        Ok(out) => !out.db_clusters().is_empty(),
        Err(_) => false,
    }
}

#[tokio::test]
#[ignore = "needs moto_server (pip moto[server]); .ci/run provides it"]
async fn moto_instance_create_list_restore_delete() {
    moto_credentials();
    let moto = Moto::start();
    let (env, config) = moto_env(&moto, "rds", "instance_id", "prod-db");
    let ProviderConfig::Rds(rds) = &config.provider else {
        panic!("rds provider expected");
    };
    let client = sluice::snapshot::rds::sdk_client(rds)
        .await
        .expect("client");
    client
        .create_db_instance()
        .db_instance_identifier("prod-db")
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .engine_version("16.3")
        .allocated_storage(20)
        .master_username("app")
        .master_user_password("not-a-secret-1")
        .multi_az(false)
        .publicly_accessible(false)
        .send()
        .await
        .expect("create instance in moto");

    let provider = RdsSnapshots::for_instance(&env, rds, &config)
        .await
        .expect("provider");
    let progress = Recorder::default();
    let snap = provider
        .create(RUN, &progress, &NoHazards)
        .await
        .expect("create snapshot");
    assert_eq!(snap.name, snap_name());
    assert_eq!(snap.status, "available");
    let again = provider
        .create(RUN, &progress, &NoHazards)
        .await
        .expect("create again");
    assert_eq!(again.name, snap.name);

    let listed = provider.list().await.expect("list");
    let names: Vec<_> = listed.iter().map(|s| (s.name.as_str(), s.kind)).collect();
    assert_eq!(names, vec![(snap.name.as_str(), SnapshotKind::Snapshot)]);
    assert_eq!(listed[0].size_bytes, Some(20 << 30));

    drop_moto_automated_snapshots(&client).await;
    let restored = provider
        .restore(&snap.name, RUN, &progress, &NoHazards)
        .await
        .expect("restore");
    assert_eq!(restored.preserved_as, preserved());
    assert!(
        instance_exists(&client, "prod-db").await,
        "original id exists again"
    );
    assert!(
        instance_exists(&client, &preserved()).await,
        "the -failed- copy exists"
    );
    let restored_db = client
        .describe_db_instances()
        .db_instance_identifier("prod-db")
        .send()
        .await
        .expect("describe restored");
    let db = &restored_db.db_instances()[0];
    assert_eq!(db.db_instance_class(), Some("db.t3.micro"));
    assert_eq!(db.db_instance_status(), Some("available"));

    // Restoring again with the same run is a no-op.
    provider
        .restore(&snap.name, RUN, &progress, &NoHazards)
        .await
        .expect("restore again");

    let listed = provider.list().await.expect("list after restore");
    let mut names: Vec<_> = listed.iter().map(|s| (s.name.clone(), s.kind)).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            (preserved(), SnapshotKind::Preserved),
            (snap.name.clone(), SnapshotKind::Snapshot),
        ]
    );

    assert!(
        provider.delete("prod-db").await.is_err(),
        "never the environment's own"
    );
    provider.delete(&snap.name).await.expect("delete snapshot");
    provider.delete(&snap.name).await.expect("already gone");
    let listed = provider.list().await.expect("list after delete");
    assert_eq!(
        listed.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        vec![preserved()]
    );

    provider
        .delete(&preserved())
        .await
        .expect("delete preserved");
    assert!(!instance_exists(&client, &preserved()).await);
    assert!(instance_exists(&client, "prod-db").await);
    let listed = provider.list().await.expect("list after deleting the copy");
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.name.clone(), s.kind))
            .collect::<Vec<_>>(),
        vec![(format!("sluice-{}", preserved()), SnapshotKind::Snapshot)]
    );
}

#[tokio::test]
#[ignore = "needs moto_server (pip moto[server]); .ci/run provides it"]
async fn moto_cluster_create_list_restore_delete() {
    moto_credentials();
    let moto = Moto::start();
    let (env, config) = moto_env(&moto, "rds-cluster", "cluster_id", "prod-aurora");
    let ProviderConfig::RdsCluster(rds) = &config.provider else {
        panic!("rds-cluster provider expected");
    };
    let client = sluice::snapshot::rds::sdk_client(rds)
        .await
        .expect("client");
    client
        .create_db_cluster()
        .db_cluster_identifier("prod-aurora")
        .engine("aurora-postgresql")
        .engine_version("15.4")
        .master_username("app")
        .master_user_password("not-a-secret-1")
        .send()
        .await
        .expect("create cluster in moto");
    for (id, class) in [
        ("prod-aurora-1", "db.r6g.large"),
        ("prod-aurora-2", "db.r6g.xlarge"),
    ] {
        client
            .create_db_instance()
            .db_instance_identifier(id)
            .db_cluster_identifier("prod-aurora")
            .engine("aurora-postgresql")
            .db_instance_class(class)
            .send()
            .await
            .expect("create cluster instance in moto");
    }

    let provider = RdsSnapshots::for_cluster(&env, rds, &config)
        .await
        .expect("provider");
    let progress = Recorder::default();
    let snap = provider
        .create(RUN, &progress, &NoHazards)
        .await
        .expect("create snapshot");
    assert_eq!(snap.name, format!("sluice-prod-aurora-{TOKEN}"));
    let listed = provider.list().await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.name.clone(), s.kind))
            .collect::<Vec<_>>(),
        vec![(snap.name.clone(), SnapshotKind::Snapshot)]
    );

    drop_moto_automated_snapshots(&client).await;
    let restored = provider
        .restore(&snap.name, RUN, &progress, &NoHazards)
        .await
        .expect("restore");
    let pc = format!("prod-aurora-failed-{TOKEN}");
    assert_eq!(restored.preserved_as, pc);
    assert!(cluster_exists(&client, "prod-aurora").await);
    assert!(cluster_exists(&client, &pc).await);
    for (id, class) in [
        ("prod-aurora-1", "db.r6g.large"),
        ("prod-aurora-2", "db.r6g.xlarge"),
    ] {
        let out = client
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .expect("recreated instance");
        let db = &out.db_instances()[0];
        assert_eq!(db.db_instance_class(), Some(class));
        assert_eq!(db.db_cluster_identifier(), Some("prod-aurora"));
        assert!(instance_exists(&client, &format!("{id}-failed-{TOKEN}")).await);
    }
    provider
        .restore(&snap.name, RUN, &progress, &NoHazards)
        .await
        .expect("restore again is a no-op");

    let listed = provider.list().await.expect("list after restore");
    let mut names: Vec<_> = listed.iter().map(|s| (s.name.clone(), s.kind)).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            (pc.clone(), SnapshotKind::Preserved),
            (snap.name.clone(), SnapshotKind::Snapshot),
        ]
    );

    provider.delete(&snap.name).await.expect("delete snapshot");
    let listed = provider.list().await.expect("list after delete");
    assert_eq!(
        listed.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        vec![pc.clone()]
    );
    provider
        .delete(&pc)
        .await
        .expect("delete preserved cluster");
    assert!(!cluster_exists(&client, &pc).await);
    assert!(cluster_exists(&client, "prod-aurora").await);
    assert!(instance_exists(&client, "prod-aurora-1").await);
    assert!(!instance_exists(&client, &format!("prod-aurora-1-failed-{TOKEN}")).await);
    let listed = provider.list().await.expect("list at the end");
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.name.clone(), s.kind))
            .collect::<Vec<_>>(),
        vec![(format!("sluice-{pc}"), SnapshotKind::Snapshot)]
    );
}
