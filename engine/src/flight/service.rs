//! The Arrow Flight service (tonic): DoPut submits a job, GetFlightInfo / PollFlightInfo report
//! it, DoGet streams its results, DoAction cancels it or returns its stats. See DESIGN.md, "Arrow
//! Flight protocol".

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, Criteria,
    Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::io::contain::Contained;
use crate::io::results::read_result_batches;
use crate::io::schema::result_schema;
use crate::jobs::ingest::Ingest;
use crate::jobs::store::Job;
use crate::jobs::JobState;
use crate::jobs::{JobError, Jobs};

/// The actions of DoAction, as ListActions describes them.
pub(crate) const ACTIONS: [(&str, &str); 3] = [
    (
        "CancelFlightInfo",
        "Cancel the job of a FlightInfo (the standard action; body: CancelFlightInfoRequest)",
    ),
    (
        "cancel",
        "Cancel a job (body: the job id); live episodes stop and unfinished tasks end `cancelled`",
    ),
    (
        "job-stats",
        "A job's ledger as JSON (body: the job id): counts, cost, calls per backend; and the \
         server's ledger",
    ),
];

impl From<JobError> for Status {
    fn from(e: JobError) -> Status {
        let msg = e.to_string();
        match e {
            JobError::Invalid(_) => Status::invalid_argument(msg),
            JobError::Exhausted(_) => Status::resource_exhausted(msg),
            JobError::NotFound(_) => Status::not_found(msg),
            _ => Status::internal(msg),
        }
    }
}

fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        FlightError::Arrow(e) => Status::invalid_argument(format!("bad Arrow data: {e}")),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// The descriptor naming a job: PATH `["jobs", id]`.
pub fn job_descriptor(id: &str) -> FlightDescriptor {
    FlightDescriptor::new_path(vec!["jobs".into(), id.into()])
}

/// The job id of a PATH `["jobs", id]` descriptor.
fn job_id(d: &FlightDescriptor) -> Result<&str, Status> {
    match (DescriptorType::try_from(d.r#type), d.path.as_slice()) {
        (Ok(DescriptorType::Path), [jobs, id]) if jobs == "jobs" => Ok(id),
        _ => Err(Status::invalid_argument(format!(
            "expected a PATH descriptor [\"jobs\", <job id>], got {:?} with path {:?}",
            DescriptorType::try_from(d.r#type).map_or("an unknown type", |t| t.as_str_name()),
            d.path
        ))),
    }
}

fn body_text(body: &[u8], action: &str) -> Result<String, Status> {
    std::str::from_utf8(body)
        .map(|s| s.trim().to_string())
        .map_err(|_| {
            Status::invalid_argument(format!("{action}: the body must be a job id (UTF-8)"))
        })
}

/// The service over a server's jobs.
pub(crate) struct JobService {
    jobs: Arc<Jobs>,
}

impl JobService {
    pub(crate) fn new(jobs: Arc<Jobs>) -> JobService {
        JobService { jobs }
    }

    fn info(&self, job: &Job) -> Result<FlightInfo, Status> {
        let status = job.status();
        let meta = serde_json::to_vec(&status).expect("statuses serialise");
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(job.id.clone()));
        FlightInfo::new()
            .try_with_schema(&result_schema())
            .map_err(|e| Status::internal(e.to_string()))
            .map(|info| {
                info.with_descriptor(job_descriptor(&job.id))
                    .with_endpoint(endpoint)
                    .with_total_records(status.rows as i64)
                    .with_total_bytes(-1)
                    .with_app_metadata(meta)
            })
    }

    async fn cancel(&self, id: &str) -> Result<JobState, Status> {
        let job = self.jobs.get(id)?;
        Ok(tokio::task::spawn_blocking(move || job.cancel())
            .await
            .map_err(|e| Status::internal(e.to_string()))??)
    }
}

/// Checks the bearer token of every call.
#[derive(Clone)]
pub struct Auth {
    expected: Option<Arc<str>>,
}

impl Auth {
    /// `token`: the bearer token clients must send; `None` lets every call through.
    pub fn new(token: Option<String>) -> Auth {
        Auth {
            expected: token.map(|t| format!("Bearer {t}").into()),
        }
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing `authorization` header: send `authorization: Bearer <token>`",
                )
            })?;
        // Compare every byte whatever the first difference, so timing tells nothing.
        let same = given.len() == expected.len()
            && given
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(req)
        } else {
            Err(Status::unauthenticated("wrong bearer token"))
        }
    }
}

/// The tonic service: [`JobService`] behind [`Auth`], with the message size limit.
pub(crate) fn service(
    jobs: Arc<Jobs>,
    auth: Auth,
) -> InterceptedService<FlightServiceServer<JobService>, Auth> {
    let max = jobs.limits.max_message_bytes;
    let server = FlightServiceServer::new(JobService::new(jobs))
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX);
    InterceptedService::new(server, auth)
}

/// Serves Flight on `listener` until `shutdown` completes; with `tls` (a certificate chain and
/// its key, PEM), over TLS only.
pub async fn serve(
    listener: TcpListener,
    jobs: Arc<Jobs>,
    auth: Auth,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(service(jobs, auth))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Turns tonic's "message too large" into RESOURCE_EXHAUSTED with the limit's name.
fn message_error(status: Status, max: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(format!(
            "a message is larger than the server takes ({max} bytes, --max-message-bytes): {}; \
             send smaller record batches (pyarrow: write_table(table, max_chunksize=...))",
            status.message()
        ))
    } else {
        status
    }
}

/// Awaits the next message of an upload for at most `idle`; an upload silent for longer is
/// ended (its slot, thread and files freed as the handler returns).
async fn within<T>(
    idle: Duration,
    next: impl std::future::Future<Output = T>,
) -> Result<T, Status> {
    tokio::time::timeout(idle, next).await.map_err(|_| {
        Status::deadline_exceeded(format!(
            "the upload sent no message for {} s (--upload-idle-timeout): it is closed and \
             nothing of it was kept; send the whole job without pausing",
            idle.as_secs_f64()
        ))
    })
}

type Stream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for JobService {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoExchangeStream = Stream<FlightData>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "no handshake: send `authorization: Bearer <token>` with every call",
        ))
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let infos: Vec<Result<FlightInfo, Status>> =
            self.jobs.list().iter().map(|j| self.info(j)).collect();
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let job = self.jobs.get(job_id(req.get_ref())?)?;
        Ok(Response::new(self.info(&job)?))
    }

    async fn poll_flight_info(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let job = self.jobs.get(job_id(req.get_ref())?)?;
        let info = self.info(&job)?;
        let status = job.status();
        let mut poll = PollInfo::new()
            .with_info(info)
            .try_with_progress(status.progress.clamp(0.0, 1.0))
            .map_err(|e| Status::internal(e.to_string()))?;
        if status.state == JobState::Running {
            poll = poll.with_descriptor(job_descriptor(&job.id));
        }
        Ok(Response::new(poll))
    }

    async fn get_schema(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        self.jobs.get(job_id(req.get_ref())?)?;
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        let schema = result_schema();
        let result: SchemaResult = arrow_flight::SchemaAsIpc::new(&schema, &options)
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(&self, req: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let id = std::str::from_utf8(&req.get_ref().ticket)
            .map_err(|_| Status::invalid_argument("the ticket is not a job id"))?;
        let job = self.jobs.get(id)?;
        let segments = job.result_segments()?;
        // Segments are read on a blocking thread, a few batches ahead of the client.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, FlightError>>(4);
        tokio::task::spawn_blocking(move || {
            for segment in segments {
                let batches = match read_result_batches(&segment) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(FlightError::ExternalError(Box::new(e))));
                        return;
                    }
                };
                for batch in batches {
                    let item = batch.map_err(|e| FlightError::ExternalError(Box::new(e)));
                    if tx.blocking_send(item).is_err() {
                        return;
                    }
                }
            }
        });
        let batches = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let data = FlightDataEncoderBuilder::new()
            .with_schema(result_schema())
            .build(batches)
            .map_err(|e| match e {
                FlightError::ExternalError(e) => Status::internal(e.to_string()),
                other => flight_status(other),
            });
        Ok(Response::new(data.boxed()))
    }

    async fn do_put(
        &self,
        req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        // The place under the upload limits is taken first, so every open stream counts.
        let slot = self.jobs.open_upload(req.remote_addr())?;
        let max = self.jobs.limits.max_message_bytes;
        let idle = self.jobs.limits.upload_idle_timeout;
        let mut incoming = req.into_inner();
        let first = within(idle, incoming.message())
            .await?
            .map_err(|s| message_error(s, max))?
            .ok_or_else(|| Status::invalid_argument("empty DoPut stream: no descriptor"))?;
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            Status::invalid_argument("the first DoPut message has no flight descriptor")
        })?;
        if DescriptorType::try_from(descriptor.r#type) != Ok(DescriptorType::Cmd) {
            return Err(Status::invalid_argument(
                "DoPut expects a CMD descriptor whose cmd is the job spec (JSON, may be empty)",
            ));
        }
        let mut upload = self.jobs.begin_upload(slot, &descriptor.cmd)?;
        let rest = incoming.map_err(move |s| FlightError::Tonic(Box::new(message_error(s, max))));
        // A panic of the Arrow IPC decoder on a malformed message (see `io::contain`) is the
        // upload's error, not a dropped connection.
        let mut decoder = Contained::new(FlightDataDecoder::new(
            stream::once(async { Ok(first) }).chain(rest),
        ));
        while let Some(item) = within(idle, decoder.next()).await? {
            let item = item
                .map_err(|panic| {
                    Status::invalid_argument(format!(
                        "malformed Arrow IPC data: the decoder failed on it: {panic}"
                    ))
                })?
                .map_err(flight_status)?;
            let ingest = match item.payload {
                DecodedPayload::None => continue,
                DecodedPayload::Schema(schema) => Ingest::Schema(schema),
                DecodedPayload::RecordBatch(batch) => Ingest::Batch(batch),
            };
            upload.send(ingest).await?;
        }
        let job = upload.finish().await?;
        let ack = serde_json::json!({ "job_id": job.id, "tasks": job.status().tasks });
        let result = PutResult {
            app_metadata: serde_json::to_vec(&ack).expect("json").into(),
        };
        Ok(Response::new(stream::once(async { Ok(result) }).boxed()))
    }

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not offered"))
    }

    async fn do_action(
        &self,
        req: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = req.into_inner();
        let body: Vec<u8> = match action.r#type.as_str() {
            "CancelFlightInfo" => {
                let request = CancelFlightInfoRequest::decode(action.body).map_err(|e| {
                    Status::invalid_argument(format!(
                        "CancelFlightInfo: the body is not a CancelFlightInfoRequest: {e}"
                    ))
                })?;
                let descriptor =
                    request
                        .info
                        .and_then(|i| i.flight_descriptor)
                        .ok_or_else(|| {
                            Status::invalid_argument(
                                "CancelFlightInfo: the FlightInfo has no descriptor",
                            )
                        })?;
                let state = self.cancel(job_id(&descriptor)?).await?;
                let status = match state {
                    JobState::Running => CancelStatus::Cancelling,
                    JobState::Cancelled => CancelStatus::Cancelled,
                    JobState::Done => CancelStatus::NotCancellable,
                };
                CancelFlightInfoResult::new(status).encode_to_vec()
            }
            "cancel" => {
                let id = body_text(&action.body, "cancel")?;
                let state = self.cancel(&id).await?;
                let reply = serde_json::json!({ "job_id": id, "state": state.as_str(),
                    "cancel_requested": state == JobState::Running || state == JobState::Cancelled });
                serde_json::to_vec(&reply).expect("json")
            }
            "job-stats" => {
                let id = body_text(&action.body, "job-stats")?;
                let job = self.jobs.get(&id)?;
                let reply = serde_json::json!({
                    "job": job.status(),
                    "report": job.report(),
                    "server": self.jobs.engine().ledger(),
                    "server_pending_tasks": self.jobs.pending(),
                    "server_open_uploads": self.jobs.open_uploads(),
                });
                serde_json::to_vec(&reply).expect("json")
            }
            other => {
                let known: Vec<&str> = ACTIONS.iter().map(|a| a.0).collect();
                return Err(Status::invalid_argument(format!(
                    "unknown action `{other}`; known: {}",
                    known.join(", ")
                )));
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(stream::once(async { Ok(result) }).boxed()))
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = ACTIONS.iter().map(|(t, d)| {
            Ok(ActionType {
                r#type: t.to_string(),
                description: d.to_string(),
            })
        });
        Ok(Response::new(
            stream::iter(actions.collect::<Vec<_>>()).boxed(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;
    use tonic::Code;

    #[test]
    fn job_errors_map_to_the_grpc_status_of_whose_fault_it_is() {
        let code = |e: JobError| Status::from(e).code();
        assert_eq!(code(JobError::Invalid("x".into())), Code::InvalidArgument);
        assert_eq!(
            code(JobError::Exhausted("x".into())),
            Code::ResourceExhausted
        );
        assert_eq!(code(JobError::NotFound("x".into())), Code::NotFound);
        assert_eq!(code(JobError::Thread("ingest")), Code::Internal);
    }

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(v) = value {
            req.metadata_mut()
                .insert("authorization", v.parse().unwrap());
        }
        req
    }

    #[test]
    fn the_bearer_token_is_required_exactly_when_one_is_set() {
        let mut open = Auth::new(None);
        assert!(open.call(with_header(None)).is_ok());

        let mut auth = Auth::new(Some("s3cret".into()));
        assert!(auth.call(with_header(Some("Bearer s3cret"))).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret!"),
            Some("s3cret"),
        ] {
            let status = auth.call(with_header(wrong)).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{wrong:?}");
        }
    }
}
