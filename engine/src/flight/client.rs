//! A client of the job service, over arrow-flight's `FlightClient`: what `tutti submit`,
//! `status`, `results`, `cancel` and `jobs` use, and the ingest benchmark.

use arrow::array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{Action, Criteria, FlightClient, FlightDescriptor, FlightInfo, Ticket};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::service::job_descriptor;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error(
        "bad server address `{0}`: expected grpc://HOST:PORT, grpc+tls://HOST:PORT or \
         http://HOST:PORT"
    )]
    Url(String),
    /// A TLS address without a certificate authority to check the server against.
    #[error(
        "{0} is a TLS address: give the certificate (PEM) of the authority that signed the \
         server's certificate (--tls-ca PEM, or Client(..., tls_ca=PATH))"
    )]
    NoCa(String),
    #[error("the TLS certificate authority for {url}: {source}")]
    Tls {
        url: String,
        source: tonic::transport::Error,
    },
    /// The server answered with an error status.
    #[error("the server said {}: {}", code_name(.0.code()), .0.message())]
    Server(tonic::Status),
    #[error("{0}")]
    Flight(FlightError),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

fn code_name(code: tonic::Code) -> String {
    // `InvalidArgument` -> `INVALID_ARGUMENT`, as gRPC writes it.
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl From<FlightError> for ClientError {
    fn from(e: FlightError) -> Self {
        match e {
            FlightError::Tonic(s) => ClientError::Server(*s),
            other => ClientError::Flight(other),
        }
    }
}

impl ClientError {
    /// The gRPC status code, when the server answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Server(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// A job as the server reports it (`FlightInfo.app_metadata`), with `total_records`.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub status: Value,
    pub total_records: i64,
}

impl JobInfo {
    fn from_info(info: &FlightInfo) -> Result<JobInfo, ClientError> {
        let status = serde_json::from_slice(&info.app_metadata).map_err(|e| {
            ClientError::Protocol(format!("FlightInfo.app_metadata is not JSON: {e}"))
        })?;
        Ok(JobInfo {
            status,
            total_records: info.total_records,
        })
    }

    pub fn state(&self) -> &str {
        self.status["state"].as_str().unwrap_or("unknown")
    }

    pub fn progress(&self) -> f64 {
        self.status["progress"].as_f64().unwrap_or(0.0)
    }

    pub fn tasks(&self) -> u64 {
        self.status["tasks"].as_u64().unwrap_or(0)
    }

    pub fn rows(&self) -> u64 {
        self.status["rows"].as_u64().unwrap_or(0)
    }
}

/// A connection to a tutti server.
pub struct JobClient {
    inner: FlightClient,
}

impl JobClient {
    /// Connects to `url` (`grpc://host:port`, `grpc+tcp://…` or `http://…`), sending `token` as
    /// a bearer token with every call.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<JobClient, ClientError> {
        JobClient::connect_with_ca(url, token, None).await
    }

    /// [`connect`](JobClient::connect), also to `grpc+tls://host:port` (or `https://…`): the
    /// server's certificate is checked against `tls_ca`, the PEM certificate of the authority
    /// that signed it (a self-signed server certificate is its own).
    pub async fn connect_with_ca(
        url: &str,
        token: Option<&str>,
        tls_ca: Option<&[u8]>,
    ) -> Result<JobClient, ClientError> {
        let plain = ["grpc+tcp://", "grpc://", "http://"]
            .iter()
            .find_map(|p| url.strip_prefix(p))
            .map(|rest| format!("http://{rest}"));
        let tls = ["grpc+tls://", "https://"]
            .iter()
            .find_map(|p| url.strip_prefix(p))
            .map(|rest| format!("https://{rest}"));
        let address = plain
            .clone()
            .or(tls.clone())
            .ok_or_else(|| ClientError::Url(url.to_string()))?;
        let mut endpoint = Endpoint::from_shared(address)
            .map_err(|_| ClientError::Url(url.to_string()))?
            .tcp_nodelay(true);
        if tls.is_some() {
            let ca = tls_ca.ok_or_else(|| ClientError::NoCa(url.to_string()))?;
            let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            endpoint = endpoint
                .tls_config(config)
                .map_err(|source| ClientError::Tls {
                    url: url.to_string(),
                    source,
                })?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_string(),
                source,
            })?;
        let mut inner = FlightClient::new(channel);
        if let Some(t) = token {
            inner
                .add_header("authorization", &format!("Bearer {t}"))
                .map_err(ClientError::from)?;
        }
        Ok(JobClient { inner })
    }

    /// Submits a job: `spec` is the job spec JSON (may be empty), `batches` the tasks. Returns the
    /// job id, which the server sends once the tasks are durable.
    pub async fn submit(
        &mut self,
        spec: &[u8],
        batches: Vec<RecordBatch>,
    ) -> Result<String, ClientError> {
        let descriptor = FlightDescriptor::new_cmd(spec.to_vec());
        let data = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(futures::stream::iter(batches.into_iter().map(Ok)));
        let mut acks = self.inner.do_put(data).await?;
        let ack = acks
            .try_next()
            .await?
            .ok_or_else(|| ClientError::Protocol("DoPut ended without a PutResult".into()))?;
        let ack: Value = serde_json::from_slice(&ack.app_metadata)
            .map_err(|e| ClientError::Protocol(format!("PutResult is not JSON: {e}")))?;
        ack["job_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Protocol(format!("PutResult without job_id: {ack}")))
    }

    pub async fn info(&mut self, job: &str) -> Result<JobInfo, ClientError> {
        let info = self.inner.get_flight_info(job_descriptor(job)).await?;
        JobInfo::from_info(&info)
    }

    /// Every job the server knows, oldest first.
    pub async fn jobs(&mut self) -> Result<Vec<JobInfo>, ClientError> {
        let infos: Vec<FlightInfo> = self
            .inner
            .list_flights(Criteria::default().expression)
            .await?
            .try_collect()
            .await?;
        infos.iter().map(JobInfo::from_info).collect()
    }

    /// The results written so far, as a stream of batches in the result schema.
    pub async fn results(&mut self, job: &str) -> Result<FlightRecordBatchStream, ClientError> {
        Ok(self.inner.do_get(Ticket::new(job.to_string())).await?)
    }

    /// Runs a DoAction whose reply is one JSON body.
    async fn action(&mut self, kind: &str, body: &str) -> Result<Value, ClientError> {
        let mut replies = self
            .inner
            .do_action(Action::new(kind, body.to_string()))
            .await?;
        let reply = replies
            .next()
            .await
            .ok_or_else(|| ClientError::Protocol(format!("`{kind}` gave no reply")))??;
        serde_json::from_slice(&reply)
            .map_err(|e| ClientError::Protocol(format!("`{kind}` reply is not JSON: {e}")))
    }

    pub async fn cancel(&mut self, job: &str) -> Result<Value, ClientError> {
        self.action("cancel", job).await
    }

    pub async fn stats(&mut self, job: &str) -> Result<Value, ClientError> {
        self.action("job-stats", job).await
    }

    /// The underlying Flight client, for calls this wrapper does not name.
    pub fn flight(&mut self) -> &mut FlightClient {
        &mut self.inner
    }
}
