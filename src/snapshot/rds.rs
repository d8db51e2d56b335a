//! AWS RDS instance snapshots (`provider = "rds"`) and Aurora cluster snapshots
//! (`provider = "rds-cluster"`).
//!
//! # Names
//!
//! * The snapshot of a run is `sluice-<id>-<token>` ([`super::run_token`] of the run id), so a
//!   create retried after a crash finds the snapshot it already started instead of making a
//!   second one.
//! * A restore never destroys anything. RDS can only restore a snapshot into a *new*
//!   instance, so the environment's instance is renamed to `<id>-failed-<token>` (the
//!   *preserved copy*), and the snapshot is restored under the original identifier, with the
//!   settings the replaced instance had (class, subnet group, security groups, parameter and
//!   option groups, Multi-AZ, public accessibility, port, deletion protection, tags). For
//!   Aurora the cluster and each of its instances are renamed the same way, the cluster is
//!   restored under its original identifier and every instance it had is created again in it
//!   with its old class, writer first.
//! * Deleting a preserved copy (retention, or by hand) is done with a *final snapshot*:
//!   `sluice-<id>-failed-<token>`, which [`SnapshotProvider::list`] shows as a snapshot and
//!   which can be restored or deleted like any other. sluice never deletes the environment's
//!   own instance or cluster, nor anything whose name it did not make.
//!
//! Every call to AWS goes through the small [`RdsApi`] trait, implemented over aws-sdk-rds by
//! [`AwsRds`]; tests inject a fake through [`RdsSnapshots::with_api`]. Throttling and other
//! transient AWS errors are retried with backoff until the operation's deadline
//! (`snapshot.timeout`), on top of the SDK's own retries.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_rds::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{run_token, Progress, Restored, Snapshot, SnapshotKind, SnapshotProvider};
use crate::config::{Environment, RdsConfig, SnapshotConfig};
use crate::error::{Error, Result};

/// The longest DB instance or DB cluster identifier RDS accepts.
pub const MAX_INSTANCE_ID_LEN: usize = 63;
/// The longest DB (cluster) snapshot identifier RDS accepts.
pub const MAX_SNAPSHOT_ID_LEN: usize = 255;

/// Tag put on each Aurora instance before it is renamed: its identifier before the rename.
pub const TAG_ORIGINAL_ID: &str = "sluice:original-identifier";
/// Tag put on each Aurora instance before it is renamed: whether it was the cluster's writer.
pub const TAG_ORIGINAL_WRITER: &str = "sluice:original-writer";

const BYTES_PER_GIB: u64 = 1024 * 1024 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// Makes `raw` a valid RDS identifier of at most `max` characters: lowercase ASCII letters,
/// digits and single hyphens, starting with a letter and not ending with a hyphen.
pub fn sanitize_identifier(raw: &str, max: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max));
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'x');
    }
    out.truncate(max.max(1));
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push('x');
    }
    out
}

/// The snapshot identifier of a run of the instance or cluster `id`: `sluice-<id>-<token>`.
pub fn snapshot_identifier(id: &str, run_id: &str) -> String {
    snapshot_identifier_for_token(id, &run_token(run_id))
}

fn snapshot_identifier_for_token(id: &str, token: &str) -> String {
    sanitize_identifier(&format!("sluice-{id}-{token}"), MAX_SNAPSHOT_ID_LEN)
}

/// The identifier the replaced instance or cluster `id` keeps after a restore for `run_id`:
/// `<id>-failed-<token>`, with `id` shortened when needed to stay within 63 characters.
pub fn preserved_identifier(id: &str, run_id: &str) -> String {
    preserved_identifier_for_token(id, &run_token(run_id))
}

fn preserved_identifier_for_token(id: &str, token: &str) -> String {
    let suffix = format!("-failed-{token}");
    let room = MAX_INSTANCE_ID_LEN.saturating_sub(suffix.len()).max(1);
    let base = sanitize_identifier(id, room);
    sanitize_identifier(&format!("{base}{suffix}"), MAX_INSTANCE_ID_LEN)
}

/// The final snapshot taken when a preserved copy is deleted: `sluice-<preserved name>`.
pub fn final_snapshot_identifier(preserved: &str) -> String {
    sanitize_identifier(&format!("sluice-{preserved}"), MAX_SNAPSHOT_ID_LEN)
}

/// What a name is to an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    /// A snapshot sluice took (before a run, or when it deleted a preserved copy).
    Snapshot { token: String },
    /// An instance or cluster a restore moved out of the way.
    Preserved { token: String },
}

fn classify(id: &str, name: &str) -> Option<Owned> {
    let name = name.to_ascii_lowercase();
    let token = name.rsplit('-').next()?;
    if token.is_empty() || token.len() > 12 || !token.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let preserved = preserved_identifier_for_token(id, token);
    if name == snapshot_identifier_for_token(id, token)
        || name == final_snapshot_identifier(&preserved)
    {
        Some(Owned::Snapshot {
            token: token.to_string(),
        })
    } else if name == preserved {
        Some(Owned::Preserved {
            token: token.to_string(),
        })
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// The API seam
// ---------------------------------------------------------------------------------------------

/// A failed RDS call: which call, on which identifier, and what AWS answered. Never carries
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The RDS action (`CreateDBSnapshot`, `ModifyDBInstance`, …).
    pub call: String,
    /// The identifier the call was about.
    pub identifier: String,
    /// The AWS error code (`DBInstanceNotFound`, `Throttling`, …), when AWS sent one.
    pub code: Option<String>,
    /// AWS's message, or the transport's when the request never got an answer.
    pub message: String,
    /// The HTTP status of the answer, when there was one.
    pub http_status: Option<u16>,
}

impl ApiError {
    /// An error with an AWS error code (or none) and a message.
    pub fn new(
        call: &str,
        identifier: &str,
        code: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            call: call.to_string(),
            identifier: identifier.to_string(),
            code: code.map(str::to_string),
            message: message.into(),
            http_status: None,
        }
    }

    /// The same error with the HTTP status it came with.
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    /// AWS asked us to slow down (`Throttling`, `ThrottlingException`, `RequestLimitExceeded`,
    /// HTTP 429 or 503).
    pub fn is_throttling(&self) -> bool {
        let code = self.code.as_deref().unwrap_or("");
        matches!(
            code,
            "Throttling"
                | "ThrottlingException"
                | "ThrottledException"
                | "RequestLimitExceeded"
                | "RequestThrottled"
                | "RequestThrottledException"
                | "TooManyRequestsException"
                | "SlowDown"
                | "PriorRequestNotComplete"
                | "BandwidthLimitExceeded"
        ) || matches!(self.http_status, Some(429 | 503))
    }

    /// Worth retrying: throttling, or AWS's side failing for a moment.
    pub fn is_transient(&self) -> bool {
        let code = self.code.as_deref().unwrap_or("");
        self.is_throttling()
            || matches!(
                code,
                "InternalFailure"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "ServiceUnavailableException"
                    | "RequestTimeout"
                    | "RequestTimeoutException"
            )
            || matches!(self.http_status, Some(500 | 502 | 504))
    }

    /// The thing the call was about does not exist (`DBInstanceNotFound`,
    /// `DBClusterNotFoundFault`, `DBSnapshotNotFound`, …).
    pub fn is_not_found(&self) -> bool {
        let code = self.code.as_deref().unwrap_or("");
        code.ends_with("NotFound") || code.ends_with("NotFoundFault")
    }

    /// The thing the call wanted to create exists already.
    pub fn is_already_exists(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| c.contains("AlreadyExists"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} failed: ", self.call, self.identifier)?;
        if let Some(code) = &self.code {
            write!(f, "{code}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(status) = self.http_status {
            write!(f, " (HTTP {status})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// A DB instance as sluice needs to see it (also the template a restore copies settings from).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceInfo {
    /// DB instance identifier.
    pub identifier: String,
    /// Its ARN (needed for tagging).
    pub arn: Option<String>,
    /// `DBInstanceStatus` (`available`, `renaming`, `creating`, …).
    pub status: String,
    /// Instance class (`db.t4g.micro`).
    pub class: Option<String>,
    /// Engine (`postgres`, `aurora-postgresql`).
    pub engine: Option<String>,
    /// Engine version.
    pub engine_version: Option<String>,
    /// The Aurora cluster it belongs to, if any.
    pub cluster: Option<String>,
    /// DB subnet group name.
    pub subnet_group: Option<String>,
    /// VPC security group ids.
    pub security_groups: Vec<String>,
    /// DB parameter group name.
    pub parameter_group: Option<String>,
    /// Option group name.
    pub option_group: Option<String>,
    /// Multi-AZ deployment.
    pub multi_az: Option<bool>,
    /// Publicly accessible.
    pub publicly_accessible: Option<bool>,
    /// Port the database listens on.
    pub port: Option<i32>,
    /// Deletion protection.
    pub deletion_protection: Option<bool>,
    /// Aurora promotion tier.
    pub promotion_tier: Option<i32>,
    /// Allocated storage in GiB.
    pub allocated_storage_gib: Option<i32>,
    /// When the instance was created.
    pub created_at: Option<DateTime<Utc>>,
    /// Tags as key/value pairs.
    pub tags: Vec<(String, String)>,
}

/// One member of an Aurora cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMember {
    /// DB instance identifier.
    pub identifier: String,
    /// Whether it is the writer.
    pub writer: bool,
}

/// An Aurora DB cluster as sluice needs to see it (also the restore's template).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterInfo {
    /// DB cluster identifier.
    pub identifier: String,
    /// Its ARN.
    pub arn: Option<String>,
    /// Cluster status (`available`, `renaming`, …).
    pub status: String,
    /// Engine (`aurora-postgresql`); required by `RestoreDBClusterFromSnapshot`.
    pub engine: Option<String>,
    /// Engine version.
    pub engine_version: Option<String>,
    /// DB subnet group name.
    pub subnet_group: Option<String>,
    /// VPC security group ids.
    pub security_groups: Vec<String>,
    /// DB cluster parameter group name.
    pub parameter_group: Option<String>,
    /// Port.
    pub port: Option<i32>,
    /// Deletion protection.
    pub deletion_protection: Option<bool>,
    /// Serverless v2 scaling (min, max ACUs), when configured.
    pub serverless_v2: Option<(f64, f64)>,
    /// Member instances as the cluster reports them.
    pub members: Vec<ClusterMember>,
    /// Allocated storage in GiB, when reported.
    pub allocated_storage_gib: Option<i32>,
    /// When the cluster was created.
    pub created_at: Option<DateTime<Utc>>,
    /// Tags as key/value pairs.
    pub tags: Vec<(String, String)>,
}

/// A DB snapshot or DB cluster snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotInfo {
    /// Snapshot identifier.
    pub identifier: String,
    /// The instance (or cluster) it was taken of.
    pub source: String,
    /// `available`, `creating`, `failed`, …
    pub status: String,
    /// Progress of a snapshot being created, 0–100.
    pub percent_progress: Option<i32>,
    /// Engine of the source.
    pub engine: Option<String>,
    /// Engine version of the source when it was taken.
    pub engine_version: Option<String>,
    /// Allocated storage in GiB.
    pub allocated_storage_gib: Option<i32>,
    /// When it was taken.
    pub created_at: Option<DateTime<Utc>>,
}

/// Every RDS call the providers make. [`AwsRds`] is the real one; tests give a fake.
/// Describe calls answer `Ok(None)` for something that does not exist.
#[async_trait]
pub trait RdsApi: Send + Sync {
    /// `DescribeDBInstances` for one identifier.
    async fn describe_instance(&self, id: &str) -> Result<Option<InstanceInfo>, ApiError>;
    /// `DescribeDBInstances` of every instance (all pages).
    async fn list_instances(&self) -> Result<Vec<InstanceInfo>, ApiError>;
    /// `DescribeDBInstances` filtered by `db-cluster-id` (all pages).
    async fn list_cluster_instances(
        &self,
        cluster_ids: &[String],
    ) -> Result<Vec<InstanceInfo>, ApiError>;
    /// `ModifyDBInstance` with `NewDBInstanceIdentifier`, applied immediately.
    async fn rename_instance(&self, id: &str, new_id: &str) -> Result<(), ApiError>;
    /// `AddTagsToResource`.
    async fn tag_resource(&self, arn: &str, tags: &[(String, String)]) -> Result<(), ApiError>;
    /// `RestoreDBInstanceFromDBSnapshot` into `id`, with the settings of `template`.
    async fn restore_instance(
        &self,
        id: &str,
        snapshot: &str,
        template: &InstanceInfo,
    ) -> Result<(), ApiError>;
    /// `CreateDBInstance` of `id` into the Aurora cluster `cluster`, like `template`.
    async fn create_cluster_instance(
        &self,
        id: &str,
        cluster: &str,
        engine: &str,
        template: &InstanceInfo,
    ) -> Result<(), ApiError>;
    /// `DeleteDBInstance`, with a final snapshot when one is named (and automated backups kept).
    async fn delete_instance(&self, id: &str, final_snapshot: Option<&str>)
        -> Result<(), ApiError>;
    /// `DescribeDBSnapshots` for one identifier.
    async fn describe_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>, ApiError>;
    /// `DescribeDBSnapshots` of every manual snapshot (all pages).
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, ApiError>;
    /// `CreateDBSnapshot`.
    async fn create_snapshot(&self, id: &str, instance: &str) -> Result<(), ApiError>;
    /// `DeleteDBSnapshot`.
    async fn delete_snapshot(&self, id: &str) -> Result<(), ApiError>;
    /// `DescribeDBClusters` for one identifier.
    async fn describe_cluster(&self, id: &str) -> Result<Option<ClusterInfo>, ApiError>;
    /// `DescribeDBClusters` of every cluster (all pages).
    async fn list_clusters(&self) -> Result<Vec<ClusterInfo>, ApiError>;
    /// `ModifyDBCluster` with `NewDBClusterIdentifier`, applied immediately.
    async fn rename_cluster(&self, id: &str, new_id: &str) -> Result<(), ApiError>;
    /// `RestoreDBClusterFromSnapshot` into `id`, with the settings of `template`.
    async fn restore_cluster(
        &self,
        id: &str,
        snapshot: &str,
        template: &ClusterInfo,
    ) -> Result<(), ApiError>;
    /// `DeleteDBCluster`, with a final snapshot when one is named.
    async fn delete_cluster(&self, id: &str, final_snapshot: Option<&str>) -> Result<(), ApiError>;
    /// `DescribeDBClusterSnapshots` for one identifier.
    async fn describe_cluster_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>, ApiError>;
    /// `DescribeDBClusterSnapshots` of every manual cluster snapshot (all pages).
    async fn list_cluster_snapshots(&self) -> Result<Vec<SnapshotInfo>, ApiError>;
    /// `CreateDBClusterSnapshot`.
    async fn create_cluster_snapshot(&self, id: &str, cluster: &str) -> Result<(), ApiError>;
    /// `DeleteDBClusterSnapshot`.
    async fn delete_cluster_snapshot(&self, id: &str) -> Result<(), ApiError>;
}

// ---------------------------------------------------------------------------------------------
// The real API over aws-sdk-rds
// ---------------------------------------------------------------------------------------------

/// Builds an aws-sdk-rds client from the usual AWS chain (environment, profile, SSO, instance
/// role, …), with the region and endpoint overrides of `rds`, standard retries (5 attempts)
/// and bounded per-attempt timeouts.
pub async fn sdk_client(rds: &RdsConfig) -> Result<aws_sdk_rds::Client> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(500)),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(region) = &rds.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &rds.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(Error::Snapshot(format!(
            "RDS {}: no AWS region: set `region = \"…\"` in the [snapshot] section or \
             AWS_REGION in the environment",
            rds.identifier
        )));
    }
    Ok(aws_sdk_rds::Client::new(&config))
}

/// [`RdsApi`] over a real aws-sdk-rds client.
#[derive(Debug, Clone)]
pub struct AwsRds {
    client: aws_sdk_rds::Client,
}

impl AwsRds {
    /// Wraps a client.
    pub fn new(client: aws_sdk_rds::Client) -> Self {
        AwsRds { client }
    }
}

fn sdk_error<E>(call: &str, identifier: &str, err: SdkError<E>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let message = match err.message() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    ApiError {
        call: call.to_string(),
        identifier: identifier.to_string(),
        code,
        message,
        http_status: status,
    }
}

fn chrono_time(t: Option<&aws_sdk_rds::primitives::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

fn tags_of(tags: &[aws_sdk_rds::types::Tag]) -> Vec<(String, String)> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// The user's tags of a resource (sluice's own bookkeeping tags left out), for a copy.
fn user_tags(tags: &[(String, String)]) -> Option<Vec<aws_sdk_rds::types::Tag>> {
    let tags: Vec<_> = tags
        .iter()
        .filter(|(k, _)| !k.starts_with("sluice:") && !k.starts_with("aws:"))
        .map(|(k, v)| aws_sdk_rds::types::Tag::builder().key(k).value(v).build())
        .collect();
    (!tags.is_empty()).then_some(tags)
}

fn instance_info(db: &aws_sdk_rds::types::DbInstance) -> Option<InstanceInfo> {
    Some(InstanceInfo {
        identifier: db.db_instance_identifier()?.to_string(),
        arn: db.db_instance_arn().map(str::to_string),
        status: db.db_instance_status().unwrap_or("unknown").to_string(),
        class: db.db_instance_class().map(str::to_string),
        engine: db.engine().map(str::to_string),
        engine_version: db.engine_version().map(str::to_string),
        cluster: db
            .db_cluster_identifier()
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        subnet_group: db
            .db_subnet_group()
            .and_then(|g| g.db_subnet_group_name())
            .map(str::to_string),
        security_groups: db
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id())
            .map(str::to_string)
            .collect(),
        parameter_group: db
            .db_parameter_groups()
            .iter()
            .find_map(|g| g.db_parameter_group_name())
            .map(str::to_string),
        option_group: db
            .option_group_memberships()
            .iter()
            .find_map(|g| g.option_group_name())
            .map(str::to_string),
        multi_az: db.multi_az(),
        publicly_accessible: db.publicly_accessible(),
        port: db
            .endpoint()
            .and_then(|e| e.port())
            .or(db.db_instance_port())
            .filter(|p| *p > 0),
        deletion_protection: db.deletion_protection(),
        promotion_tier: db.promotion_tier(),
        allocated_storage_gib: db.allocated_storage(),
        created_at: chrono_time(db.instance_create_time()),
        tags: tags_of(db.tag_list()),
    })
}

fn cluster_info(c: &aws_sdk_rds::types::DbCluster) -> Option<ClusterInfo> {
    Some(ClusterInfo {
        identifier: c.db_cluster_identifier()?.to_string(),
        arn: c.db_cluster_arn().map(str::to_string),
        status: c.status().unwrap_or("unknown").to_string(),
        engine: c.engine().map(str::to_string),
        engine_version: c.engine_version().map(str::to_string),
        subnet_group: c.db_subnet_group().map(str::to_string),
        security_groups: c
            .vpc_security_groups()
            .iter()
            .filter_map(|g| g.vpc_security_group_id())
            .map(str::to_string)
            .collect(),
        parameter_group: c.db_cluster_parameter_group().map(str::to_string),
        port: c.port().filter(|p| *p > 0),
        deletion_protection: c.deletion_protection(),
        serverless_v2: c
            .serverless_v2_scaling_configuration()
            .and_then(|s| Some((s.min_capacity()?, s.max_capacity()?))),
        members: c
            .db_cluster_members()
            .iter()
            .filter_map(|m| {
                Some(ClusterMember {
                    identifier: m.db_instance_identifier()?.to_string(),
                    writer: m.is_cluster_writer().unwrap_or(false),
                })
            })
            .collect(),
        // Aurora reports 1 here whatever the volume holds: not a size.
        allocated_storage_gib: c
            .allocated_storage()
            .filter(|_| !c.engine().is_some_and(|e| e.starts_with("aurora"))),
        created_at: chrono_time(c.cluster_create_time()),
        tags: tags_of(c.tag_list()),
    })
}

fn snapshot_info(s: &aws_sdk_rds::types::DbSnapshot) -> Option<SnapshotInfo> {
    Some(SnapshotInfo {
        identifier: s.db_snapshot_identifier()?.to_string(),
        source: s.db_instance_identifier().unwrap_or_default().to_string(),
        status: s.status().unwrap_or("unknown").to_string(),
        percent_progress: s.percent_progress(),
        engine: s.engine().map(str::to_string),
        engine_version: s.engine_version().map(str::to_string),
        allocated_storage_gib: s.allocated_storage(),
        created_at: chrono_time(s.snapshot_create_time()),
    })
}

fn cluster_snapshot_info(s: &aws_sdk_rds::types::DbClusterSnapshot) -> Option<SnapshotInfo> {
    Some(SnapshotInfo {
        identifier: s.db_cluster_snapshot_identifier()?.to_string(),
        source: s.db_cluster_identifier().unwrap_or_default().to_string(),
        status: s.status().unwrap_or("unknown").to_string(),
        percent_progress: s.percent_progress(),
        engine: s.engine().map(str::to_string),
        engine_version: s.engine_version().map(str::to_string),
        allocated_storage_gib: s.allocated_storage(),
        created_at: chrono_time(s.snapshot_create_time()),
    })
}

fn non_empty(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// Option groups named `default:…` are what RDS picks anyway; pass only a custom one.
fn custom_option_group(name: &Option<String>) -> Option<String> {
    name.clone().filter(|n| !n.starts_with("default:"))
}

#[async_trait]
impl RdsApi for AwsRds {
    async fn describe_instance(&self, id: &str) -> Result<Option<InstanceInfo>, ApiError> {
        match self
            .client
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .db_instances()
                .iter()
                .filter_map(instance_info)
                .find(|i| i.identifier.eq_ignore_ascii_case(id))),
            Err(e) => {
                let e = sdk_error("DescribeDBInstances", id, e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn list_instances(&self) -> Result<Vec<InstanceInfo>, ApiError> {
        self.list_instances_filtered(None).await
    }

    async fn list_cluster_instances(
        &self,
        cluster_ids: &[String],
    ) -> Result<Vec<InstanceInfo>, ApiError> {
        if cluster_ids.is_empty() {
            return Ok(Vec::new());
        }
        let filter = aws_sdk_rds::types::Filter::builder()
            .name("db-cluster-id")
            .set_values(Some(cluster_ids.to_vec()))
            .build();
        self.list_instances_filtered(Some(filter)).await
    }

    async fn rename_instance(&self, id: &str, new_id: &str) -> Result<(), ApiError> {
        self.client
            .modify_db_instance()
            .db_instance_identifier(id)
            .new_db_instance_identifier(new_id)
            .apply_immediately(true)
            .send()
            .await
            .map_err(|e| sdk_error("ModifyDBInstance", id, e))?;
        Ok(())
    }

    async fn tag_resource(&self, arn: &str, tags: &[(String, String)]) -> Result<(), ApiError> {
        let tags = tags
            .iter()
            .map(|(k, v)| aws_sdk_rds::types::Tag::builder().key(k).value(v).build())
            .collect();
        self.client
            .add_tags_to_resource()
            .resource_name(arn)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| sdk_error("AddTagsToResource", arn, e))?;
        Ok(())
    }

    async fn restore_instance(
        &self,
        id: &str,
        snapshot: &str,
        t: &InstanceInfo,
    ) -> Result<(), ApiError> {
        self.client
            .restore_db_instance_from_db_snapshot()
            .db_instance_identifier(id)
            .db_snapshot_identifier(snapshot)
            .set_db_instance_class(t.class.clone())
            .set_db_subnet_group_name(t.subnet_group.clone())
            .set_vpc_security_group_ids(non_empty(&t.security_groups))
            .set_db_parameter_group_name(t.parameter_group.clone())
            .set_option_group_name(custom_option_group(&t.option_group))
            .set_multi_az(t.multi_az)
            .set_publicly_accessible(t.publicly_accessible)
            .set_port(t.port)
            .set_deletion_protection(t.deletion_protection)
            .set_tags(user_tags(&t.tags))
            .send()
            .await
            .map_err(|e| sdk_error("RestoreDBInstanceFromDBSnapshot", id, e))?;
        Ok(())
    }

    async fn create_cluster_instance(
        &self,
        id: &str,
        cluster: &str,
        engine: &str,
        t: &InstanceInfo,
    ) -> Result<(), ApiError> {
        let Some(class) = &t.class else {
            return Err(ApiError::new(
                "CreateDBInstance",
                id,
                None,
                "the replaced instance's class is unknown; CreateDBInstance needs one",
            ));
        };
        self.client
            .create_db_instance()
            .db_instance_identifier(id)
            .db_cluster_identifier(cluster)
            .engine(engine)
            .db_instance_class(class)
            .set_db_parameter_group_name(t.parameter_group.clone())
            .set_publicly_accessible(t.publicly_accessible)
            .set_promotion_tier(t.promotion_tier)
            .set_tags(user_tags(&t.tags))
            .send()
            .await
            .map_err(|e| sdk_error("CreateDBInstance", id, e))?;
        Ok(())
    }

    async fn delete_instance(
        &self,
        id: &str,
        final_snapshot: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut req = self
            .client
            .delete_db_instance()
            .db_instance_identifier(id)
            .delete_automated_backups(false);
        req = match final_snapshot {
            Some(snap) => req
                .skip_final_snapshot(false)
                .final_db_snapshot_identifier(snap),
            None => req.skip_final_snapshot(true),
        };
        req.send()
            .await
            .map_err(|e| sdk_error("DeleteDBInstance", id, e))?;
        Ok(())
    }

    async fn describe_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>, ApiError> {
        match self
            .client
            .describe_db_snapshots()
            .db_snapshot_identifier(id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .db_snapshots()
                .iter()
                .filter_map(snapshot_info)
                .find(|s| s.identifier.eq_ignore_ascii_case(id))),
            Err(e) => {
                let e = sdk_error("DescribeDBSnapshots", id, e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, ApiError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_db_snapshots()
                .snapshot_type("manual")
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeDBSnapshots", "(manual snapshots)", e))?;
            out.extend(page.db_snapshots().iter().filter_map(snapshot_info));
            match page.marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn create_snapshot(&self, id: &str, instance: &str) -> Result<(), ApiError> {
        self.client
            .create_db_snapshot()
            .db_snapshot_identifier(id)
            .db_instance_identifier(instance)
            .send()
            .await
            .map_err(|e| sdk_error("CreateDBSnapshot", id, e))?;
        Ok(())
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), ApiError> {
        self.client
            .delete_db_snapshot()
            .db_snapshot_identifier(id)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteDBSnapshot", id, e))?;
        Ok(())
    }

    async fn describe_cluster(&self, id: &str) -> Result<Option<ClusterInfo>, ApiError> {
        match self
            .client
            .describe_db_clusters()
            .db_cluster_identifier(id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .db_clusters()
                .iter()
                .filter_map(cluster_info)
                .find(|c| c.identifier.eq_ignore_ascii_case(id))),
            Err(e) => {
                let e = sdk_error("DescribeDBClusters", id, e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn list_clusters(&self) -> Result<Vec<ClusterInfo>, ApiError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_db_clusters()
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeDBClusters", "(all clusters)", e))?;
            out.extend(page.db_clusters().iter().filter_map(cluster_info));
            match page.marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn rename_cluster(&self, id: &str, new_id: &str) -> Result<(), ApiError> {
        self.client
            .modify_db_cluster()
            .db_cluster_identifier(id)
            .new_db_cluster_identifier(new_id)
            .apply_immediately(true)
            .send()
            .await
            .map_err(|e| sdk_error("ModifyDBCluster", id, e))?;
        Ok(())
    }

    async fn restore_cluster(
        &self,
        id: &str,
        snapshot: &str,
        t: &ClusterInfo,
    ) -> Result<(), ApiError> {
        let Some(engine) = &t.engine else {
            return Err(ApiError::new(
                "RestoreDBClusterFromSnapshot",
                id,
                None,
                "the engine of the snapshot and of the replaced cluster is unknown",
            ));
        };
        let scaling = t.serverless_v2.map(|(min, max)| {
            aws_sdk_rds::types::ServerlessV2ScalingConfiguration::builder()
                .min_capacity(min)
                .max_capacity(max)
                .build()
        });
        self.client
            .restore_db_cluster_from_snapshot()
            .db_cluster_identifier(id)
            .snapshot_identifier(snapshot)
            .engine(engine)
            .set_engine_version(t.engine_version.clone())
            .set_db_subnet_group_name(t.subnet_group.clone())
            .set_vpc_security_group_ids(non_empty(&t.security_groups))
            .set_db_cluster_parameter_group_name(t.parameter_group.clone())
            .set_port(t.port)
            .set_deletion_protection(t.deletion_protection)
            .set_serverless_v2_scaling_configuration(scaling)
            .set_tags(user_tags(&t.tags))
            .send()
            .await
            .map_err(|e| sdk_error("RestoreDBClusterFromSnapshot", id, e))?;
        Ok(())
    }

    async fn delete_cluster(&self, id: &str, final_snapshot: Option<&str>) -> Result<(), ApiError> {
        let req = self.client.delete_db_cluster().db_cluster_identifier(id);
        let req = match final_snapshot {
            Some(snap) => req
                .skip_final_snapshot(false)
                .final_db_snapshot_identifier(snap),
            None => req.skip_final_snapshot(true),
        };
        req.send()
            .await
            .map_err(|e| sdk_error("DeleteDBCluster", id, e))?;
        Ok(())
    }

    async fn describe_cluster_snapshot(&self, id: &str) -> Result<Option<SnapshotInfo>, ApiError> {
        match self
            .client
            .describe_db_cluster_snapshots()
            .db_cluster_snapshot_identifier(id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .db_cluster_snapshots()
                .iter()
                .filter_map(cluster_snapshot_info)
                .find(|s| s.identifier.eq_ignore_ascii_case(id))),
            Err(e) => {
                let e = sdk_error("DescribeDBClusterSnapshots", id, e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn list_cluster_snapshots(&self) -> Result<Vec<SnapshotInfo>, ApiError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_db_cluster_snapshots()
                .snapshot_type("manual")
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| {
                    sdk_error(
                        "DescribeDBClusterSnapshots",
                        "(manual cluster snapshots)",
                        e,
                    )
                })?;
            out.extend(
                page.db_cluster_snapshots()
                    .iter()
                    .filter_map(cluster_snapshot_info),
            );
            match page.marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn create_cluster_snapshot(&self, id: &str, cluster: &str) -> Result<(), ApiError> {
        self.client
            .create_db_cluster_snapshot()
            .db_cluster_snapshot_identifier(id)
            .db_cluster_identifier(cluster)
            .send()
            .await
            .map_err(|e| sdk_error("CreateDBClusterSnapshot", id, e))?;
        Ok(())
    }

    async fn delete_cluster_snapshot(&self, id: &str) -> Result<(), ApiError> {
        self.client
            .delete_db_cluster_snapshot()
            .db_cluster_snapshot_identifier(id)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteDBClusterSnapshot", id, e))?;
        Ok(())
    }
}

impl AwsRds {
    async fn list_instances_filtered(
        &self,
        filter: Option<aws_sdk_rds::types::Filter>,
    ) -> Result<Vec<InstanceInfo>, ApiError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_db_instances()
                .set_filters(filter.clone().map(|f| vec![f]))
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| sdk_error("DescribeDBInstances", "(list)", e))?;
            out.extend(page.db_instances().iter().filter_map(instance_info));
            match page.marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                _ => return Ok(out),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------------------------

/// Which RDS resource an environment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdsTarget {
    /// A DB instance (`provider = "rds"`), by identifier.
    Instance(String),
    /// An Aurora DB cluster (`provider = "rds-cluster"`), by identifier.
    Cluster(String),
}

impl RdsTarget {
    fn id(&self) -> &str {
        match self {
            RdsTarget::Instance(id) | RdsTarget::Cluster(id) => id,
        }
    }
}

/// Snapshots and restores of one RDS instance or Aurora cluster.
pub struct RdsSnapshots {
    api: Box<dyn RdsApi>,
    target: RdsTarget,
    timeout: Duration,
    poll_interval: Duration,
    origin: Option<String>,
}

/// How a wait ended badly.
enum WaitEnd {
    /// Still not there at the deadline; the last status seen.
    TimedOut(String),
}

/// Polls until something is done, reporting progress and keeping the deadline.
struct Waiter<'a> {
    what: String,
    start: Instant,
    deadline: Instant,
    poll: Duration,
    progress: &'a dyn Progress,
}

impl Waiter<'_> {
    /// Reports `status`, then sleeps one poll interval, or gives up at the deadline.
    async fn pending(&self, status: impl Into<String>) -> Result<(), WaitEnd> {
        let status = status.into();
        self.progress.update(&format!(
            "{}: {}, {}",
            self.what,
            status,
            short_duration(self.start.elapsed())
        ));
        let now = Instant::now();
        if now >= self.deadline {
            return Err(WaitEnd::TimedOut(status));
        }
        tokio::time::sleep(self.poll.min(self.deadline - now)).await;
        Ok(())
    }
}

/// `2m10s`, `45s`, `1h02m`.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn snapshot_failed(status: &str) -> bool {
    matches!(
        status,
        "failed"
            | "error"
            | "deleting"
            | "deleted"
            | "incompatible-restore"
            | "incompatible-parameters"
    )
}

fn resource_failed(status: &str) -> bool {
    matches!(
        status,
        "failed"
            | "error"
            | "deleting"
            | "incompatible-restore"
            | "incompatible-parameters"
            | "incompatible-network"
            | "incompatible-option-group"
            | "inaccessible-encryption-credentials"
            | "storage-full"
            | "restore-error"
    )
}

fn snapshot_status_text(s: &SnapshotInfo) -> String {
    match s.percent_progress {
        Some(p) if s.status != "available" => format!("{}, {p}%", s.status),
        _ => s.status.clone(),
    }
}

fn gib_to_bytes(gib: Option<i32>) -> Option<u64> {
    gib.filter(|g| *g > 0).map(|g| g as u64 * BYTES_PER_GIB)
}

/// For an Aurora instance renamed by a restore of run `token`: its identifier before.
fn preserved_member_original(info: &InstanceInfo, token: &str) -> Option<String> {
    let tagged = info
        .tags
        .iter()
        .find(|(k, _)| k == TAG_ORIGINAL_ID)
        .map(|(_, v)| v.to_ascii_lowercase());
    if let Some(original) = tagged {
        if preserved_identifier_for_token(&original, token) == info.identifier {
            return Some(original);
        }
    }
    info.identifier
        .strip_suffix(&format!("-failed-{token}"))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn tagged_writer(info: &InstanceInfo) -> Option<bool> {
    info.tags
        .iter()
        .find(|(k, _)| k == TAG_ORIGINAL_WRITER)
        .map(|(_, v)| v == "true")
}

impl RdsSnapshots {
    /// Builds the provider for the DB instance of an environment (`provider = "rds"`), with an
    /// aws-sdk-rds client from the usual AWS chain and the config's region and endpoint.
    pub async fn for_instance(
        env: &Environment,
        rds: &RdsConfig,
        config: &SnapshotConfig,
    ) -> Result<RdsSnapshots> {
        let client = sdk_client(rds).await?;
        let (timeout, poll) = super::waits(config);
        let mut provider = RdsSnapshots::with_api(
            Box::new(AwsRds::new(client)),
            RdsTarget::Instance(rds.identifier.clone()),
            timeout,
            poll,
        );
        provider.origin = Some(env.file.display().to_string());
        Ok(provider)
    }

    /// Builds the provider for the Aurora cluster of an environment (`provider =
    /// "rds-cluster"`), like [`RdsSnapshots::for_instance`].
    pub async fn for_cluster(
        env: &Environment,
        rds: &RdsConfig,
        config: &SnapshotConfig,
    ) -> Result<RdsSnapshots> {
        let client = sdk_client(rds).await?;
        let (timeout, poll) = super::waits(config);
        let mut provider = RdsSnapshots::with_api(
            Box::new(AwsRds::new(client)),
            RdsTarget::Cluster(rds.identifier.clone()),
            timeout,
            poll,
        );
        provider.origin = Some(env.file.display().to_string());
        Ok(provider)
    }

    /// Builds the provider over any [`RdsApi`] (tests inject fakes here). `timeout` bounds each
    /// create, restore and delete; `poll_interval` is how often they poll.
    pub fn with_api(
        api: Box<dyn RdsApi>,
        target: RdsTarget,
        timeout: Duration,
        poll_interval: Duration,
    ) -> RdsSnapshots {
        let target = match target {
            RdsTarget::Instance(id) => RdsTarget::Instance(id.trim().to_ascii_lowercase()),
            RdsTarget::Cluster(id) => RdsTarget::Cluster(id.trim().to_ascii_lowercase()),
        };
        RdsSnapshots {
            api,
            target,
            timeout,
            poll_interval: poll_interval.max(Duration::from_millis(1)),
            origin: None,
        }
    }

    /// The identifier a restore for `run_id` keeps the replaced instance or cluster under.
    pub fn preserved_name(&self, run_id: &str) -> String {
        preserved_identifier(self.id(), run_id)
    }

    fn id(&self) -> &str {
        self.target.id()
    }

    fn noun(&self) -> &'static str {
        match self.target {
            RdsTarget::Instance(_) => "instance",
            RdsTarget::Cluster(_) => "cluster",
        }
    }

    fn deadline_text(&self) -> String {
        let t = humantime::format_duration(self.timeout);
        match &self.origin {
            Some(file) => format!("the {t} deadline (`snapshot.timeout` in {file})"),
            None => format!("the {t} deadline (`snapshot.timeout`)"),
        }
    }

    /// One API call, retried with backoff while AWS throttles us or fails transiently, until
    /// `deadline`.
    async fn call<T, F, Fut>(&self, deadline: Instant, mut f: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut backoff = self.poll_interval.min(Duration::from_secs(1));
        loop {
            match f().await {
                Err(e) if e.is_transient() => {
                    let now = Instant::now();
                    if now + backoff > deadline {
                        return Err(ApiError {
                            message: format!(
                                "{} (still failing at {}; retried with backoff until then)",
                                e.message,
                                self.deadline_text()
                            ),
                            ..e
                        });
                    }
                    warn!(call = %e.call, identifier = %e.identifier, code = e.code.as_deref().unwrap_or("(none)"),
                          "RDS call throttled or failed transiently; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF.max(self.poll_interval));
                }
                other => return other,
            }
        }
    }

    async fn describe_snap(
        &self,
        deadline: Instant,
        name: &str,
    ) -> Result<Option<SnapshotInfo>, ApiError> {
        match self.target {
            RdsTarget::Instance(_) => {
                self.call(deadline, || self.api.describe_snapshot(name))
                    .await
            }
            RdsTarget::Cluster(_) => {
                self.call(deadline, || self.api.describe_cluster_snapshot(name))
                    .await
            }
        }
    }

    fn delete_snapshot_hint(&self, name: &str) -> String {
        match self.target {
            RdsTarget::Instance(_) => {
                format!("aws rds delete-db-snapshot --db-snapshot-identifier {name}")
            }
            RdsTarget::Cluster(_) => format!(
                "aws rds delete-db-cluster-snapshot --db-cluster-snapshot-identifier {name}"
            ),
        }
    }

    fn to_snapshot(&self, s: &SnapshotInfo, token: Option<String>) -> Snapshot {
        Snapshot {
            name: s.identifier.clone(),
            kind: SnapshotKind::Snapshot,
            run: token,
            created_at: s.created_at,
            status: s.status.clone(),
            size_bytes: gib_to_bytes(s.allocated_storage_gib),
        }
    }

    // -- create ---------------------------------------------------------------------------

    async fn create_snapshot(&self, run_id: &str, progress: &dyn Progress) -> Result<Snapshot> {
        let id = self.id().to_string();
        let noun = self.noun();
        let name = self.snapshot_name(run_id);
        let start = Instant::now();
        let deadline = start + self.timeout;
        let api_fail = |e: ApiError, doing: &str| {
            Error::Snapshot(format!(
                "RDS snapshot {name} of {noun} {id}: {doing}: {e}. The {noun} {id} was not changed."
            ))
        };
        match self
            .describe_snap(deadline, &name)
            .await
            .map_err(|e| api_fail(e, "could not look for an existing snapshot"))?
        {
            Some(existing) => {
                info!(snapshot = %name, status = %existing.status,
                      "snapshot of this run exists already (an earlier attempt made it); not creating another");
            }
            None => {
                info!(snapshot = %name, "{noun} {id}: creating snapshot");
                let created = match self.target {
                    RdsTarget::Instance(_) => {
                        self.call(deadline, || self.api.create_snapshot(&name, &id))
                            .await
                    }
                    RdsTarget::Cluster(_) => {
                        self.call(deadline, || self.api.create_cluster_snapshot(&name, &id))
                            .await
                    }
                };
                match created {
                    Ok(()) => {}
                    Err(e) if e.is_already_exists() => {
                        info!(snapshot = %name, "snapshot was created concurrently; waiting for it")
                    }
                    Err(e) => return Err(api_fail(e, "could not start the snapshot")),
                }
            }
        }
        let waiter = Waiter {
            what: format!("snapshot {name}"),
            start,
            deadline,
            poll: self.poll_interval,
            progress,
        };
        let mut seen = false;
        loop {
            let current = self
                .describe_snap(deadline, &name)
                .await
                .map_err(|e| api_fail(e, "could not check the snapshot's progress"))?;
            let status = match current {
                Some(s) if s.status == "available" => {
                    progress.update(&format!(
                        "snapshot {name}: available, {}",
                        short_duration(start.elapsed())
                    ));
                    return Ok(self.to_snapshot(&s, Some(run_token(run_id))));
                }
                Some(s) if snapshot_failed(&s.status) => {
                    return Err(Error::Snapshot(format!(
                        "RDS snapshot {name} of {noun} {id} ended with status `{}` after {}; the \
                         {noun} {id} was not changed. sluice did not delete the snapshot: inspect it \
                         (aws rds describe-db{}-snapshots) and delete it with `{}` before retrying \
                         this run.",
                        s.status,
                        short_duration(start.elapsed()),
                        if noun == "cluster" { "-cluster" } else { "" },
                        self.delete_snapshot_hint(&name)
                    )));
                }
                Some(s) => {
                    seen = true;
                    snapshot_status_text(&s)
                }
                None if seen => {
                    return Err(Error::Snapshot(format!(
                        "RDS snapshot {name} of {noun} {id} disappeared while sluice waited for \
                         it (deleted by someone else?); the {noun} {id} was not changed. Run the \
                         same command again to take it anew."
                    )))
                }
                None => "requested, not visible yet".to_string(),
            };
            if let Err(WaitEnd::TimedOut(last)) = waiter.pending(status).await {
                return Err(Error::Snapshot(format!(
                    "RDS snapshot {name} of {noun} {id} is still `{last}` at {}; the {noun} {id} was \
                     not changed and the snapshot was not deleted: it may still finish. Run the same \
                     command again (same run) to keep waiting for it, or raise `snapshot.timeout`; \
                     to give it up, delete it with `{}`.",
                    self.deadline_text(),
                    self.delete_snapshot_hint(&name)
                )));
            }
        }
    }

    /// Checks that `snapshot` exists, is available and belongs to this environment.
    async fn restorable(&self, deadline: Instant, snapshot: &str) -> Result<SnapshotInfo> {
        let id = self.id();
        let noun = self.noun();
        let snap = self.describe_snap(deadline, snapshot).await.map_err(|e| {
            Error::Snapshot(format!(
                "cannot restore {noun} {id} from {snapshot}: looking the snapshot up failed: {e}. \
                     Nothing was changed."
            ))
        })?;
        let Some(snap) = snap else {
            return Err(Error::Snapshot(format!(
                "cannot restore {noun} {id}: there is no {}snapshot named {snapshot} (see `sluice \
                 snapshots list`). Nothing was changed.",
                if noun == "cluster" {
                    "DB cluster "
                } else {
                    "DB "
                }
            )));
        };
        if snap.status != "available" {
            return Err(Error::Snapshot(format!(
                "cannot restore {noun} {id} from {snapshot}: the snapshot is `{}`, not `available`; \
                 wait for it (or pick another) and run the restore again. Nothing was changed.",
                snapshot_status_text(&snap)
            )));
        }
        let source = snap.source.to_ascii_lowercase();
        let ours = source == id
            || classify(id, &snap.identifier).is_some()
            || matches!(classify(id, &source), Some(Owned::Preserved { .. }));
        if !ours {
            return Err(Error::Snapshot(format!(
                "cannot restore {noun} {id} from {snapshot}: that snapshot was taken of {noun} \
                 {}, not of this environment's {noun}; sluice restores only this environment's \
                 snapshots. Nothing was changed.",
                snap.source
            )));
        }
        Ok(snap)
    }

    // -- restore: instance ----------------------------------------------------------------

    async fn restore_instance(
        &self,
        snapshot: &str,
        run_id: &str,
        progress: &dyn Progress,
    ) -> Result<Restored> {
        let id = self.id().to_string();
        let token = run_token(run_id);
        let preserved = preserved_identifier_for_token(&id, &token);
        let start = Instant::now();
        let deadline = start + self.timeout;
        self.restorable(deadline, snapshot).await?;
        let fail = |what: String| {
            Error::Snapshot(format!("restore of instance {id} from {snapshot}: {what}"))
        };

        // 1. Move the current instance out of the way (or find that an earlier attempt did).
        let waiter = Waiter {
            what: format!("instance {id}: renaming to {preserved}"),
            start,
            deadline,
            poll: self.poll_interval,
            progress,
        };
        let mut rename_requested = false;
        let (template, resumed) = loop {
            let current = self
                .call(deadline, || self.api.describe_instance(&id))
                .await
                .map_err(|e| fail(format!("{e}. Nothing was deleted; run the restore again with the same run to continue.")))?;
            let kept = self
                .call(deadline, || self.api.describe_instance(&preserved))
                .await
                .map_err(|e| fail(format!("{e}. Nothing was deleted; run the restore again with the same run to continue.")))?;
            let status = match (&current, kept) {
                (_, Some(kept)) => {
                    if rename_requested && current.is_some() {
                        format!("{id} still visible")
                    } else if kept.status == "available" {
                        // An instance under the original name now was restored by an earlier
                        // attempt of this run (the rename happened before it).
                        break (kept, current.is_some() && !rename_requested);
                    } else {
                        format!("{preserved} {}", kept.status)
                    }
                }
                (Some(cur), None) => {
                    if let Some(cluster) = &cur.cluster {
                        return Err(fail(format!(
                            "instance {id} belongs to Aurora cluster {cluster}; use `provider = \
                             \"rds-cluster\"` with `cluster_id = \"{cluster}\"`. Nothing was changed."
                        )));
                    }
                    if rename_requested {
                        format!("{id} {}", cur.status)
                    } else if cur.status == "available" {
                        info!(instance = %id, preserved = %preserved, "renaming the instance out of the way");
                        self.call(deadline, || self.api.rename_instance(&id, &preserved))
                            .await
                            .map_err(|e| {
                                fail(format!(
                                    "renaming the current instance to {preserved} failed: {e}. \
                                     Nothing was changed; run the restore again."
                                ))
                            })?;
                        rename_requested = true;
                        "rename requested".to_string()
                    } else {
                        format!("{id} is `{}`, waiting for `available` to rename it", cur.status)
                    }
                }
                (None, None) => {
                    return Err(fail(format!(
                        "neither instance {id} nor a preserved copy {preserved} exists, so there is \
                         no instance to take settings from and nothing to put back. Nothing was \
                         changed; restore it by hand with `aws rds restore-db-instance-from-db-snapshot \
                         --db-instance-identifier {id} --db-snapshot-identifier {snapshot} …`."
                    )))
                }
            };
            if let Err(WaitEnd::TimedOut(last)) = waiter.pending(status).await {
                return Err(fail(format!(
                    "moving instance {id} out of the way (to {preserved}) did not finish by {} \
                     (last seen: {last}). Nothing was deleted; run the restore again with the same \
                     run to continue.",
                    self.deadline_text()
                )));
            }
        };

        // 2. Restore the snapshot under the original identifier.
        if resumed {
            info!(instance = %id, "an earlier attempt already started the restore; waiting for it");
        } else {
            info!(instance = %id, snapshot, "restoring the snapshot under the original identifier");
            if let Err(e) = self
                .call(deadline, || {
                    self.api.restore_instance(&id, snapshot, &template)
                })
                .await
            {
                // A restore whose answer was lost may still have been accepted: then the new
                // instance exists and is the one to wait for, and renaming back would fail.
                let landed = matches!(
                    self.call(deadline, || self.api.describe_instance(&id))
                        .await,
                    Ok(Some(_))
                );
                if !landed {
                    return Err(self
                        .put_instance_back(&id, &preserved, snapshot, e, progress)
                        .await);
                }
                warn!(instance = %id, "the restore call reported `{e}`, but instance {id} exists now; waiting for it");
            }
        }

        // 3. Wait for the restored instance.
        let waiter = Waiter {
            what: format!("instance {id}: restoring from {snapshot}"),
            start,
            deadline,
            poll: self.poll_interval,
            progress,
        };
        loop {
            let current = self
                .call(deadline, || self.api.describe_instance(&id))
                .await
                .map_err(|e| {
                    fail(format!(
                        "checking the restored instance failed: {e}. The replaced instance is kept \
                         as {preserved}; nothing was deleted. Run the restore again with the same run \
                         to keep waiting."
                    ))
                })?;
            let status = match current {
                Some(i) if i.status == "available" => {
                    progress.update(&format!(
                        "instance {id}: restored from {snapshot}, available, {}",
                        short_duration(start.elapsed())
                    ));
                    return Ok(Restored {
                        snapshot: snapshot.to_string(),
                        preserved_as: preserved,
                    });
                }
                Some(i) if resource_failed(&i.status) => {
                    return Err(fail(format!(
                        "the restored instance {id} is `{}`. The replaced instance is kept, unchanged, \
                         as {preserved}; nothing was deleted. To go back to it, rename or delete the \
                         broken {id}, then `aws rds modify-db-instance --db-instance-identifier \
                         {preserved} --new-db-instance-identifier {id} --apply-immediately`.",
                        i.status
                    )))
                }
                Some(i) => i.status,
                None => "restore requested, not visible yet".to_string(),
            };
            if let Err(WaitEnd::TimedOut(last)) = waiter.pending(status).await {
                return Err(fail(format!(
                    "the restored instance {id} is still `{last}` at {}. The replaced instance is \
                     kept as {preserved}; nothing was deleted. Run the restore again with the same \
                     run to keep waiting.",
                    self.deadline_text()
                )));
            }
        }
    }

    /// After a failed restore call: renames the preserved instance back so the environment
    /// works again, and describes all of it in the returned error.
    async fn put_instance_back(
        &self,
        id: &str,
        preserved: &str,
        snapshot: &str,
        cause: ApiError,
        progress: &dyn Progress,
    ) -> Error {
        warn!(instance = %id, preserved = %preserved, "restore failed; renaming the preserved instance back");
        let start = Instant::now();
        let deadline = start + self.timeout;
        let head = format!(
            "restore of instance {id} from {snapshot} failed: {cause}. The instance had been renamed \
             to {preserved} for the restore"
        );
        let manual = format!(
            "`aws rds modify-db-instance --db-instance-identifier {preserved} \
             --new-db-instance-identifier {id} --apply-immediately`"
        );
        if let Err(e) = self
            .call(deadline, || self.api.rename_instance(preserved, id))
            .await
        {
            return Error::Snapshot(format!(
                "{head}; renaming it back failed too: {e}. The environment's data is intact in \
                 instance {preserved}; nothing was deleted. Rename it back with {manual}."
            ));
        }
        let waiter = Waiter {
            what: format!("instance {preserved}: renaming back to {id}"),
            start,
            deadline,
            poll: self.poll_interval,
            progress,
        };
        loop {
            let back = self.call(deadline, || self.api.describe_instance(id)).await;
            let status = match back {
                Ok(Some(i)) if i.status == "available" => {
                    return Error::Snapshot(format!(
                        "{head}; it was renamed back to {id} and is available again, as it was \
                         before the restore. Nothing was deleted."
                    ))
                }
                Ok(Some(i)) => i.status,
                Ok(None) => "renaming".to_string(),
                Err(e) => {
                    return Error::Snapshot(format!(
                    "{head}; renaming it back to {id} was requested, but checking it failed: {e}. \
                         Nothing was deleted; if {id} does not come back, rename it with {manual}."
                ))
                }
            };
            if let Err(WaitEnd::TimedOut(last)) = waiter.pending(status).await {
                return Error::Snapshot(format!(
                    "{head}; renaming it back to {id} was requested but it is still `{last}` at {}. \
                     Nothing was deleted; it should become available under {id} by itself.",
                    self.deadline_text()
                ));
            }
        }
    }

    // -- restore: Aurora cluster ----------------------------------------------------------

    async fn restore_cluster(
        &self,
        snapshot: &str,
        run_id: &str,
        progress: &dyn Progress,
    ) -> Result<Restored> {
        let cid = self.id().to_string();
        let token = run_token(run_id);
        let pcid = preserved_identifier_for_token(&cid, &token);
        let start = Instant::now();
        let deadline = start + self.timeout;
        let snap = self.restorable(deadline, snapshot).await?;
        let fail = |what: String| {
            Error::Snapshot(format!("restore of cluster {cid} from {snapshot}: {what}"))
        };
        let kept_note = format!(
            "The replaced cluster is kept as {pcid} and its instances as <instance>-failed-{token}; \
             nothing was deleted"
        );

        // 1. Rename the cluster's instances, then the cluster, out of the way.
        let waiter = Waiter {
            what: format!("cluster {cid}: moving to {pcid}"),
            start,
            deadline,
            poll: self.poll_interval,
            progress,
        };
        let mut renames_requested: HashSet<String> = HashSet::new();
        let mut cluster_rename_requested = false;
        let (kept_cluster, resumed) = loop {
            let current = self
                .call(deadline, || self.api.describe_cluster(&cid))
                .await
                .map_err(|e| fail(format!("{e}. Nothing was deleted.")))?;
            let kept = self
                .call(deadline, || self.api.describe_cluster(&pcid))
                .await
                .map_err(|e| fail(format!("{e}. Nothing was deleted.")))?;
            let status = match (&current, kept) {
                (_, Some(kept)) => {
                    if cluster_rename_requested && current.is_some() {
                        format!("{cid} still visible")
                    } else if kept.status == "available" {
                        break (kept, current.is_some() && !cluster_rename_requested);
                    } else {
                        format!("{pcid} {}", kept.status)
                    }
                }
                (Some(cur), None) if cluster_rename_requested => format!("{cid} {}", cur.status),
                (Some(cur), None) if cur.status != "available" => {
                    format!("{cid} is `{}`, waiting for `available`", cur.status)
                }
                (Some(cur), None) => {
                    let members = self
                        .call(deadline, || self.api.list_cluster_instances(std::slice::from_ref(&cid)))
                        .await
                        .map_err(|e| fail(format!("{e}. Nothing was deleted.")))?;
                    let mut ready = true;
                    for m in &members {
                        if preserved_member_original(m, &token).is_some() {
                            ready &= m.status == "available";
                            continue;
                        }
                        if renames_requested.contains(&m.identifier) || m.status != "available" {
                            ready = false;
                            continue;
                        }
                        let new_id = preserved_identifier_for_token(&m.identifier, &token);
                        let writer = cur
                            .members
                            .iter()
                            .any(|c| c.identifier == m.identifier && c.writer);
                        if let Some(arn) = &m.arn {
                            let tags = vec![
                                (TAG_ORIGINAL_ID.to_string(), m.identifier.clone()),
                                (TAG_ORIGINAL_WRITER.to_string(), writer.to_string()),
                            ];
                            self.call(deadline, || self.api.tag_resource(arn, &tags))
                                .await
                                .map_err(|e| fail(format!("{e}. Nothing was deleted; run the restore again.")))?;
                        }
                        info!(instance = %m.identifier, preserved = %new_id, "renaming cluster instance out of the way");
                        self.call(deadline, || self.api.rename_instance(&m.identifier, &new_id))
                            .await
                            .map_err(|e| {
                                fail(format!(
                                    "renaming instance {} to {new_id} failed: {e}. Nothing was \
                                     deleted; run the restore again with the same run to continue.",
                                    m.identifier
                                ))
                            })?;
                        renames_requested.insert(m.identifier.clone());
                        ready = false;
                    }
                    if ready {
                        info!(cluster = %cid, preserved = %pcid, "renaming the cluster out of the way");
                        self.call(deadline, || self.api.rename_cluster(&cid, &pcid))
                            .await
                            .map_err(|e| {
                                fail(format!(
                                    "renaming the cluster to {pcid} failed: {e}. Its instances were \
                                     renamed to <instance>-failed-{token}; nothing was deleted. Run \
                                     the restore again with the same run to continue."
                                ))
                            })?;
                        cluster_rename_requested = true;
                        "cluster rename requested".to_string()
                    } else {
                        "renaming the cluster's instances".to_string()
                    }
                }
                (None, None) => {
                    return Err(fail(format!(
                        "neither cluster {cid} nor a preserved copy {pcid} exists, so there is no \
                         cluster to take settings from and nothing to put back. Nothing was changed."
                    )))
                }
            };
            if let Err(WaitEnd::TimedOut(last)) = waiter.pending(status).await {
                return Err(fail(format!(
                    "moving cluster {cid} out of the way (to {pcid}) did not finish by {} (last seen: \
                     {last}). Nothing was deleted; run the restore again with the same run to continue.",
                    self.deadline_text()
                )));
            }
        };

        // The instances the replaced cluster had, by their original names, writer first.
        let both = [cid.clone(), pcid.clone()];
        let mut old_members: Vec<(String, bool, InstanceInfo)> = self
            .call(deadline, || self.api.list_cluster_instances(&both))
            .await
            .map_err(|e| fail(format!("{e}. {kept_note}.")))?
            .into_iter()
            .filter_map(|i| {
                let original = preserved_member_original(&i, &token)?;
                let writer = tagged_writer(&i).unwrap_or_else(|| {
                    kept_cluster
                        .members
                        .iter()
                        .any(|m| m.identifier == i.identifier && m.writer)
                });
                Some((original, writer, i))
            })
            .collect();
        old_members.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then(a.2.promotion_tier.cmp(&b.2.promotion_tier))
                .then(a.0.cmp(&b.0))
        });
        if old_members.is_empty() {
            warn!(cluster = %cid, "the replaced cluster had no instances; the restored one gets none");
        }

        // 2. Restore the cluster under its original identifier.
        if resumed {
            info!(cluster = %cid, "an earlier attempt already started the restore; continuing it");
        } else {
            let mut template = kept_cluster.clone();
            template.engine = snap.engine.clone().or(template.engine);
            template.engine_version = snap.engine_version.clone().or(template.engine_version);
            info!(cluster = %cid, snapshot, "restoring the cluster snapshot under the original identifier");
            if let Err(e) = self
                .call(deadline, || {
                    self.api.restore_cluster(&cid, snapshot, &template)
                })
                .await
            {
                let landed = matches!(
                    self.call(deadline, || self.api.describe_cluster(&cid))
                        .await,
                    Ok(Some(_))
                );
                if !landed {
                    return Err(self
                        .put_cluster_back(&cid, &pcid, snapshot, &old_members, e, progress)
                        .await);
                }
                warn!(cluster = %cid, "the restore call reported `{e}`, but cluster {cid} exists now; continuing with it");
            }
        }
        let engine = snap
            .engine
            .clone()
            .or(kept_cluster.engine.clone())
            .unwrap_or_else(|| "aurora-postgresql".to_string());

        // 3. Wait for the cluster, create its instances again, wait for them.
        let waiter = Waiter {
            what: format!("cluster {cid}: restoring from {snapshot}"),
            start,
            deadline,
            poll: self.poll_interval,
            progress,
        };
        let mut created: HashSet<String> = HashSet::new();
        loop {
            let cluster = self
                .call(deadline, || self.api.describe_cluster(&cid))
                .await
                .map_err(|e| {
                    fail(format!(
                        "{e}. {kept_note}; run the restore again with the same run to continue."
                    ))
                })?;
            let status = match cluster {
                None => "restore requested, not visible yet".to_string(),
                Some(c) if resource_failed(&c.status) => {
                    return Err(fail(format!(
                        "the restored cluster {cid} is `{}`. {kept_note}. To go back, rename or delete \
                         the broken {cid}, then rename {pcid} (and its instances) back with `aws rds \
                         modify-db-cluster --db-cluster-identifier {pcid} --new-db-cluster-identifier \
                         {cid} --apply-immediately`.",
                        c.status
                    )))
                }
                Some(c) if c.status != "available" => format!("cluster {}", c.status),
                Some(_) => {
                    let mut pending = Vec::new();
                    for (original, _, old) in &old_members {
                        let now = self
                            .call(deadline, || self.api.describe_instance(original))
                            .await
                            .map_err(|e| fail(format!("{e}. {kept_note}.")))?;
                        match now {
                            None if !created.contains(original) => {
                                info!(instance = %original, cluster = %cid, "creating instance in the restored cluster");
                                self.call(deadline, || {
                                    self.api.create_cluster_instance(original, &cid, &engine, old)
                                })
                                .await
                                .map_err(|e| {
                                    fail(format!(
                                        "the cluster {cid} was restored, but creating its instance \
                                         {original} failed: {e}. {kept_note}. Run the restore again \
                                         with the same run to retry creating the instances."
                                    ))
                                })?;
                                created.insert(original.clone());
                                pending.push(format!("{original} requested"));
                            }
                            None => pending.push(format!("{original} not visible yet")),
                            Some(i) if i.status == "available" => {}
                            Some(i) if resource_failed(&i.status) => {
                                return Err(fail(format!(
                                    "the cluster {cid} was restored, but its new instance {original} \
                                     is `{}`. {kept_note}.",
                                    i.status
                                )))
                            }
                            Some(i) => pending.push(format!("{original} {}", i.status)),
                        }
                    }
                    if pending.is_empty() {
                        progress.update(&format!(
                            "cluster {cid}: restored from {snapshot}, available, {}",
                            short_duration(start.elapsed())
                        ));
                        return Ok(Restored {
                            snapshot: snapshot.to_string(),
                            preserved_as: pcid,
                        });
                    }
                    format!("instances: {}", pending.join(", "))
                }
            };
            if let Err(WaitEnd::TimedOut(last)) = waiter.pending(status).await {
                return Err(fail(format!(
                    "the restored cluster {cid} is still not ready at {} ({last}). {kept_note}. Run \
                     the restore again with the same run to keep waiting.",
                    self.deadline_text()
                )));
            }
        }
    }

    /// After a failed `RestoreDBClusterFromSnapshot`: renames the preserved cluster and its
    /// instances back, and describes all of it in the returned error.
    async fn put_cluster_back(
        &self,
        cid: &str,
        pcid: &str,
        snapshot: &str,
        members: &[(String, bool, InstanceInfo)],
        cause: ApiError,
        progress: &dyn Progress,
    ) -> Error {
        warn!(cluster = %cid, preserved = %pcid, "cluster restore failed; renaming the preserved cluster back");
        let start = Instant::now();
        let deadline = start + self.timeout;
        let head = format!(
            "restore of cluster {cid} from {snapshot} failed: {cause}. The cluster had been renamed \
             to {pcid} (and its instances to <instance>-failed-…) for the restore"
        );
        let manual = format!(
            "`aws rds modify-db-cluster --db-cluster-identifier {pcid} --new-db-cluster-identifier \
             {cid} --apply-immediately`"
        );
        if let Err(e) = self
            .call(deadline, || self.api.rename_cluster(pcid, cid))
            .await
        {
            return Error::Snapshot(format!(
                "{head}; renaming it back failed too: {e}. The data is intact in cluster {pcid}; \
                 nothing was deleted. Rename it back with {manual}."
            ));
        }
        let waiter = Waiter {
            what: format!("cluster {pcid}: renaming back to {cid}"),
            start,
            deadline,
            poll: self.poll_interval,
            progress,
        };
        let mut renamed_back: HashSet<String> = HashSet::new();
        loop {
            let status = match self.call(deadline, || self.api.describe_cluster(cid)).await {
                Ok(Some(c)) if c.status == "available" => {
                    let mut pending = Vec::new();
                    for (original, _, old) in members {
                        if renamed_back.contains(original) {
                            match self.call(deadline, || self.api.describe_instance(original)).await {
                                Ok(Some(i)) if i.status == "available" => {}
                                Ok(other) => pending.push(format!(
                                    "{original} {}",
                                    other.map(|i| i.status).unwrap_or_else(|| "renaming".into())
                                )),
                                Err(e) => {
                                    return Error::Snapshot(format!(
                                        "{head}; the cluster was renamed back to {cid} and is \
                                         available, but checking instance {original} failed: {e}. \
                                         Nothing was deleted."
                                    ))
                                }
                            }
                            continue;
                        }
                        if let Err(e) = self
                            .call(deadline, || self.api.rename_instance(&old.identifier, original))
                            .await
                        {
                            return Error::Snapshot(format!(
                                "{head}; the cluster was renamed back to {cid} and is available, but \
                                 renaming instance {} back to {original} failed: {e}. Nothing was \
                                 deleted; the cluster works with the instance under either name.",
                                old.identifier
                            ));
                        }
                        renamed_back.insert(original.clone());
                        pending.push(format!("{original} renaming"));
                    }
                    if pending.is_empty() {
                        return Error::Snapshot(format!(
                            "{head}; it was renamed back to {cid} with its instances and is available \
                             again, as it was before the restore. Nothing was deleted."
                        ));
                    }
                    pending.join(", ")
                }
                Ok(Some(c)) => c.status,
                Ok(None) => "renaming".to_string(),
                Err(e) => {
                    return Error::Snapshot(format!(
                        "{head}; renaming it back to {cid} was requested, but checking it failed: \
                         {e}. Nothing was deleted; if {cid} does not come back, rename it with {manual}."
                    ))
                }
            };
            if let Err(WaitEnd::TimedOut(last)) = waiter.pending(status).await {
                return Error::Snapshot(format!(
                    "{head}; renaming it back to {cid} was requested but is not finished at {} \
                     ({last}). Nothing was deleted.",
                    self.deadline_text()
                ));
            }
        }
    }

    // -- delete ---------------------------------------------------------------------------

    async fn delete_named(&self, name: &str) -> Result<()> {
        let id = self.id();
        let noun = self.noun();
        let name = name.trim().to_ascii_lowercase();
        let deadline = Instant::now() + self.timeout;
        if name == id {
            return Err(Error::Snapshot(format!(
                "refusing to delete {name}: it is this environment's own {noun}; sluice never \
                 deletes it"
            )));
        }
        let fail = |e: ApiError| Error::Snapshot(format!("deleting {name}: {e}"));
        match classify(id, &name) {
            Some(Owned::Snapshot { .. }) => {
                if self.describe_snap(deadline, &name).await.map_err(fail)?.is_none() {
                    info!(snapshot = %name, "already gone");
                    return Ok(());
                }
                let res = match self.target {
                    RdsTarget::Instance(_) => {
                        self.call(deadline, || self.api.delete_snapshot(&name)).await
                    }
                    RdsTarget::Cluster(_) => {
                        self.call(deadline, || self.api.delete_cluster_snapshot(&name))
                            .await
                    }
                };
                match res {
                    Err(e) if !e.is_not_found() => Err(fail(e)),
                    _ => Ok(()),
                }
            }
            Some(Owned::Preserved { token }) => match self.target {
                RdsTarget::Instance(_) => self.delete_preserved_instance(&name, deadline).await,
                RdsTarget::Cluster(_) => {
                    self.delete_preserved_cluster(&name, &token, deadline).await
                }
            },
            None => Err(Error::Snapshot(format!(
                "refusing to delete {name}: sluice did not make it for {noun} {id}. It deletes only \
                 its snapshots (sluice-{id}-<run>) and the copies a restore preserved \
                 ({id}-failed-<run>)."
            ))),
        }
    }

    async fn delete_preserved_instance(&self, name: &str, deadline: Instant) -> Result<()> {
        let fail = |e: ApiError| {
            Error::Snapshot(format!(
                "deleting preserved instance {name}: {e}. Nothing was deleted."
            ))
        };
        let Some(info) = self
            .call(deadline, || self.api.describe_instance(name))
            .await
            .map_err(fail)?
        else {
            return Ok(());
        };
        if info.status == "deleting" {
            return Ok(());
        }
        let final_snapshot = final_snapshot_identifier(name);
        info!(instance = %name, final_snapshot = %final_snapshot, "deleting preserved instance with a final snapshot");
        match self
            .call(deadline, || {
                self.api.delete_instance(name, Some(&final_snapshot))
            })
            .await
        {
            Err(e) if !e.is_not_found() => Err(fail(e)),
            _ => Ok(()),
        }
    }

    async fn delete_preserved_cluster(
        &self,
        name: &str,
        token: &str,
        deadline: Instant,
    ) -> Result<()> {
        let cid = self.id().to_string();
        let fail = |e: ApiError| Error::Snapshot(format!("deleting preserved cluster {name}: {e}"));
        let Some(cluster) = self
            .call(deadline, || self.api.describe_cluster(name))
            .await
            .map_err(fail)?
        else {
            return Ok(());
        };
        if cluster.status == "deleting" {
            return Ok(());
        }
        // Its instances: what the cluster reports, plus instances sluice renamed for this run
        // that still name the original cluster (moto keeps the old cluster id on them).
        let both = [name.to_string(), cid.clone()];
        let listed = self
            .call(deadline, || self.api.list_cluster_instances(&both))
            .await
            .map_err(fail)?;
        let mut doomed: Vec<String> = listed
            .iter()
            .filter(|i| preserved_member_original(i, token).is_some())
            .map(|i| i.identifier.clone())
            .collect();
        let suffix = format!("-failed-{token}");
        for m in &cluster.members {
            if doomed.contains(&m.identifier) {
                continue;
            }
            if !m.identifier.ends_with(&suffix) {
                return Err(Error::Snapshot(format!(
                    "refusing to delete preserved cluster {name}: it has instance {} that sluice did \
                     not move there; delete or move that instance first. Nothing was deleted.",
                    m.identifier
                )));
            }
            doomed.push(m.identifier.clone());
        }
        for inst in &doomed {
            info!(instance = %inst, "deleting instance of preserved cluster {name}");
            match self
                .call(deadline, || self.api.delete_instance(inst, None))
                .await
            {
                Err(e) if !e.is_not_found() => {
                    return Err(Error::Snapshot(format!(
                    "deleting preserved cluster {name}: deleting its instance {inst} failed: {e}. \
                         The cluster itself was not deleted."
                )))
                }
                _ => {}
            }
        }
        // The cluster can go only once its instances are gone.
        loop {
            let mut left = Vec::new();
            for inst in &doomed {
                if self
                    .call(deadline, || self.api.describe_instance(inst))
                    .await
                    .map_err(fail)?
                    .is_some()
                {
                    left.push(inst.clone());
                }
            }
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Snapshot(format!(
                    "deleting preserved cluster {name}: its instances {} are still being deleted at \
                     {}; the cluster was not deleted yet. Run the delete again later.",
                    left.join(", "),
                    self.deadline_text()
                )));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
        let final_snapshot = final_snapshot_identifier(name);
        info!(cluster = %name, final_snapshot = %final_snapshot, "deleting preserved cluster with a final snapshot");
        match self
            .call(deadline, || {
                self.api.delete_cluster(name, Some(&final_snapshot))
            })
            .await
        {
            Err(e) if !e.is_not_found() => Err(fail(e)),
            _ => Ok(()),
        }
    }

    // -- list -----------------------------------------------------------------------------

    async fn list_all(&self) -> Result<Vec<Snapshot>> {
        let id = self.id();
        let deadline = Instant::now() + self.timeout;
        let fail = |e: ApiError| {
            Error::Snapshot(format!("listing snapshots of {} {id}: {e}", self.noun()))
        };
        let snaps = match self.target {
            RdsTarget::Instance(_) => self.call(deadline, || self.api.list_snapshots()).await,
            RdsTarget::Cluster(_) => {
                self.call(deadline, || self.api.list_cluster_snapshots())
                    .await
            }
        }
        .map_err(fail)?;
        let mut out: Vec<Snapshot> = snaps
            .iter()
            .filter_map(|s| match classify(id, &s.identifier)? {
                Owned::Snapshot { token } => Some(self.to_snapshot(s, Some(token))),
                Owned::Preserved { .. } => None,
            })
            .collect();
        let kept = |name: String, created_at, status: String, gib| match classify(id, &name) {
            Some(Owned::Preserved { token }) => Some(Snapshot {
                name,
                kind: SnapshotKind::Preserved,
                run: Some(token),
                created_at,
                status,
                size_bytes: gib_to_bytes(gib),
            }),
            _ => None,
        };
        match self.target {
            RdsTarget::Instance(_) => out.extend(
                self.call(deadline, || self.api.list_instances())
                    .await
                    .map_err(fail)?
                    .into_iter()
                    .filter_map(|i| {
                        kept(
                            i.identifier,
                            i.created_at,
                            i.status,
                            i.allocated_storage_gib,
                        )
                    }),
            ),
            RdsTarget::Cluster(_) => out.extend(
                self.call(deadline, || self.api.list_clusters())
                    .await
                    .map_err(fail)?
                    .into_iter()
                    .filter_map(|c| {
                        kept(
                            c.identifier,
                            c.created_at,
                            c.status,
                            c.allocated_storage_gib,
                        )
                    }),
            ),
        }
        out.sort_by(|a, b| match (a.created_at, b.created_at) {
            (Some(x), Some(y)) => x.cmp(&y).then(a.name.cmp(&b.name)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.name.cmp(&b.name),
        });
        Ok(out)
    }
}

#[async_trait]
impl SnapshotProvider for RdsSnapshots {
    fn kind(&self) -> &'static str {
        match self.target {
            RdsTarget::Instance(_) => "rds",
            RdsTarget::Cluster(_) => "rds-cluster",
        }
    }

    fn snapshot_name(&self, run_id: &str) -> String {
        snapshot_identifier(self.id(), run_id)
    }

    async fn create(
        &self,
        run_id: &str,
        progress: &dyn Progress,
        _hazards: &dyn super::HazardLog,
    ) -> Result<Snapshot> {
        self.create_snapshot(run_id, progress).await
    }

    async fn restore(
        &self,
        snapshot: &str,
        run_id: &str,
        progress: &dyn Progress,
        _hazards: &dyn super::HazardLog,
    ) -> Result<Restored> {
        let snapshot = snapshot.trim().to_ascii_lowercase();
        match self.target {
            RdsTarget::Instance(_) => self.restore_instance(&snapshot, run_id, progress).await,
            RdsTarget::Cluster(_) => self.restore_cluster(&snapshot, run_id, progress).await,
        }
    }

    /// Deletes a `sluice-<id>-<run>` snapshot, or a preserved `<id>-failed-<run>` copy *with a
    /// final snapshot* `sluice-<id>-failed-<run>` (for a cluster: its instances first, then the
    /// cluster with a final cluster snapshot). Already gone is fine; anything else is refused.
    async fn delete(&self, name: &str) -> Result<()> {
        self.delete_named(name).await
    }

    async fn list(&self) -> Result<Vec<Snapshot>> {
        self.list_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rds_rules() {
        assert_eq!(
            snapshot_identifier("prod-db", "0F8E3A2C-1B4D-4E5F-8A9B-0C1D2E3F4A5B"),
            "sluice-prod-db-0f8e3a2c1b4d"
        );
        assert_eq!(
            preserved_identifier("prod-db", "run-1"),
            "prod-db-failed-run1"
        );
        assert_eq!(sanitize_identifier("--A__b--c-", 63), "a-b-c");
        assert_eq!(sanitize_identifier("9lives", 63), "x9lives");
        let long = "a".repeat(70);
        let p = preserved_identifier(&long, "0f8e3a2c1b4d");
        assert!(p.len() <= 63, "{p}");
        assert!(p.ends_with("-failed-0f8e3a2c1b4d"));
        let cut = sanitize_identifier(&format!("{}-{}", "a".repeat(254), "b"), 255);
        assert!(!cut.ends_with('-') && cut.len() <= 255);
    }

    #[test]
    fn classification_is_exact() {
        assert_eq!(
            classify("prod-db", "sluice-prod-db-abc123"),
            Some(Owned::Snapshot {
                token: "abc123".into()
            })
        );
        assert_eq!(
            classify("prod-db", "sluice-prod-db-failed-abc123"),
            Some(Owned::Snapshot {
                token: "abc123".into()
            })
        );
        assert_eq!(
            classify("prod-db", "prod-db-failed-abc123"),
            Some(Owned::Preserved {
                token: "abc123".into()
            })
        );
        assert_eq!(classify("prod", "sluice-prod-db-abc123"), None);
        assert_eq!(classify("prod-db", "prod-db"), None);
        assert_eq!(classify("prod-db", "rds:prod-db-2024-01-01"), None);
    }

    #[test]
    fn throttling_is_recognised() {
        assert!(ApiError::new("X", "y", Some("Throttling"), "slow").is_throttling());
        assert!(ApiError::new("X", "y", None, "slow")
            .with_status(429)
            .is_transient());
        assert!(!ApiError::new("X", "y", Some("DBInstanceNotFound"), "no").is_transient());
        assert!(ApiError::new("X", "y", Some("DBClusterNotFoundFault"), "no").is_not_found());
    }
}
