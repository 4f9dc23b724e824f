//! QMP: the orchestrator's handle on each QEMU. Built on the `qapi` crate;
//! its event half is polled by a background task all the time (it also
//! delivers command replies).

use crate::machine::AppDisk;
use qapi::qmp;
use std::path::Path;
use std::time::Duration;

/// A QMP error.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Cannot connect or negotiate.
    #[error("QMP connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("QMP {command}: {detail}")]
    Command {
        /// The command.
        command: &'static str,
        detail: String,
    },
    /// No answer in time.
    #[error("QMP {0}: no answer within the timeout")]
    Timeout(&'static str),
}

type Service = qapi::futures::QapiService<qapi::futures::QmpStreamTokio<tokio::io::WriteHalf<tokio::net::UnixStream>>>;

/// A connected QMP session.
pub struct Qmp {
    service: Service,
    events: tokio::task::JoinHandle<()>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Qmp {
    /// Connect and negotiate capabilities.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let err = |source| QmpError::Connect { path: path.display().to_string(), source };
        let stream = tokio::time::timeout(TIMEOUT, async {
            qapi::futures::QmpStreamTokio::open_uds(path).await?.negotiate().await
        })
        .await
        .map_err(|_| err(std::io::Error::new(std::io::ErrorKind::TimedOut, "negotiation timed out")))?
        .map_err(err)?;
        let (service, events) = stream.into_parts();
        let events = tokio::spawn(async move {
            // Poll forever; replies come through here too. Ends when QEMU closes the socket.
            events.into_future().await;
        });
        Ok(Qmp { service, events })
    }

    async fn exec<C: qapi::qmp::QmpCommand + 'static>(&self, name: &'static str, cmd: C) -> Result<C::Ok, QmpError> {
        match tokio::time::timeout(TIMEOUT, self.service.execute(cmd)).await {
            Err(_) => Err(QmpError::Timeout(name)),
            Ok(Err(e)) => Err(QmpError::Command { command: name, detail: e.to_string() }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// `query-status`: the run state, e.g. "running".
    pub async fn status(&self) -> Result<String, QmpError> {
        let st = self.exec("query-status", qmp::query_status {}).await?;
        Ok(serde_json::to_value(st.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default())
    }

    /// `query-named-block-nodes`: the app disk's overlay and backing image.
    pub async fn app_disk(&self) -> Result<AppDisk, QmpError> {
        let nodes = self.exec("query-named-block-nodes", qmp::query_named_block_nodes { flat: Some(true) }).await?;
        let node = nodes
            .iter()
            .find(|n| n.node_name.as_deref() == Some(super::argv::APP_NODE))
            .ok_or(QmpError::Command { command: "query-named-block-nodes", detail: "no app node".into() })?;
        Ok(AppDisk {
            overlay: node.image.base.filename.clone(),
            backing: node.image.base.backing_filename.clone().unwrap_or_default(),
        })
    }

    /// `query-block`: the device's view, to cross-check the node's.
    pub async fn block_device_file(&self) -> Result<String, QmpError> {
        let devs = self.exec("query-block", qmp::query_block {}).await?;
        Ok(devs.iter().find_map(|d| d.inserted.as_ref().map(|i| i.file.clone())).unwrap_or_default())
    }

    /// `stop`: pause the guest's vCPUs (its devices and clocks stop with them).
    pub async fn pause(&self) -> Result<(), QmpError> {
        self.exec("stop", qmp::stop {}).await.map(|_| ())
    }

    /// `cont`: resume a paused guest.
    pub async fn resume(&self) -> Result<(), QmpError> {
        self.exec("cont", qmp::cont {}).await.map(|_| ())
    }

    /// `set_link`: take the NIC `device` down (frames dropped both ways) or up.
    pub async fn set_link(&self, device: &str, up: bool) -> Result<(), QmpError> {
        self.exec("set_link", qmp::set_link { name: device.to_string(), up }).await.map(|_| ())
    }

    /// `quit`: QEMU exits; the connection reset that follows is expected.
    pub async fn quit(self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.service.execute(qmp::quit {})).await;
        self.events.abort();
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.events.abort();
    }
}
