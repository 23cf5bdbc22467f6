//! The day-2 verbs on one container of an engine, as a backend serves them: its
//! output, a restart, a stop and start, a pause, a command inside, and its data
//! directory copied out and in as tar streams. `ops` uses these and never the
//! engine's API itself; a second backend serves the same verbs.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{DockerError, Engine};
use crate::execution::{LogsRequest, Output};

impl Engine {
    fn api(&self, what: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let host = self.host.name.clone();
        move |source| DockerError::Api {
            host,
            what: what.to_string(),
            source,
        }
    }

    /// The container's output (stdout and stderr).
    pub fn output(
        &self,
        id: &str,
        req: &LogsRequest,
    ) -> impl Stream<Item = Result<Output, DockerError>> + use<> {
        use bollard::query_parameters::LogsOptionsBuilder;
        let mut b = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(req.follow)
            .timestamps(false);
        if let Some(s) = req.since {
            b = b.since(s as i32);
        }
        if let Some(t) = &req.tail {
            b = b.tail(t);
        }
        let host = self.host.name.clone();
        self.docker.logs(id, Some(b.build())).map(move |r| {
            r.map(|chunk| Output {
                stderr: matches!(chunk, bollard::container::LogOutput::StdErr { .. }),
                text: chunk.to_string(),
            })
            .map_err(|source| DockerError::Api {
                host: host.clone(),
                what: "read the container's logs".into(),
                source,
            })
        })
    }

    pub async fn restart(&self, id: &str, stop_timeout_s: i32) -> Result<(), DockerError> {
        let options = bollard::query_parameters::RestartContainerOptionsBuilder::new()
            .t(stop_timeout_s)
            .build();
        self.docker
            .restart_container(id, Some(options))
            .await
            .map_err(self.api("restart the container"))
    }

    pub async fn stop(&self, id: &str, stop_timeout_s: i32) -> Result<(), DockerError> {
        let options = bollard::query_parameters::StopContainerOptionsBuilder::new()
            .t(stop_timeout_s)
            .build();
        self.docker
            .stop_container(id, Some(options))
            .await
            .map_err(self.api("stop the container"))
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(self.api("start the container"))
    }

    pub async fn pause(&self, id: &str) -> Result<(), DockerError> {
        self.docker
            .pause_container(id)
            .await
            .map_err(self.api("pause the container"))
    }

    pub async fn unpause(&self, id: &str) -> Result<(), DockerError> {
        self.docker
            .unpause_container(id)
            .await
            .map_err(self.api("resume the container"))
    }

    /// Runs `command` in the container, its output handed to `out` as it comes
    /// (`true` for stderr); the command's exit code.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        out: &mut (dyn FnMut(bool, &str) + Send),
    ) -> Result<i64, DockerError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions::<String> {
                    cmd: Some(command.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(self.api("create the exec"))?;
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(self.api("start the exec"))?
        {
            while let Some(chunk) = output.next().await {
                let chunk = chunk.map_err(self.api("read the exec's output"))?;
                let is_err = matches!(chunk, bollard::container::LogOutput::StdErr { .. });
                out(is_err, &chunk.to_string());
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(self.api("inspect the exec"))?;
        Ok(inspected.exit_code.unwrap_or(-1))
    }

    /// `path` in the container as a tar stream.
    pub fn copy_out(
        &self,
        id: &str,
        path: &str,
    ) -> impl Stream<Item = Result<Bytes, DockerError>> + use<> {
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let host = self.host.name.clone();
        self.docker
            .download_from_container(id, Some(options))
            .map(move |r| {
                r.map_err(|source| DockerError::Api {
                    host: host.clone(),
                    what: "read the tenant's data directory".into(),
                    source,
                })
            })
    }

    /// A tar stream unpacked at `path` in the container, streamed from `file`.
    pub async fn copy_in(
        &self,
        id: &str,
        path: &str,
        file: tokio::fs::File,
    ) -> Result<(), DockerError> {
        let options = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
            .path(path)
            .build();
        self.docker
            .upload_to_container(
                id,
                Some(options),
                bollard::body_try_stream(tokio_util::io::ReaderStream::new(file)),
            )
            .await
            .map_err(self.api("write the tenant's data directory"))
    }
}
