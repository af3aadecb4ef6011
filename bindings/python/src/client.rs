//! `_Client`: the Flight client of `tutti serve` ([`JobClient`]), one blocking call per method
//! with the GIL released. Replies that are JSON on the wire stay JSON text here; the Python
//! wrapper parses them.

use arrow::datatypes::SchemaRef;
use arrow::ffi_stream::RecordBatchStreamReader;
use arrow::record_batch::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow_pyarrow::PyArrowType;
use futures::TryStreamExt;
use parking_lot::Mutex;
use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tutti_engine::chain;
use tutti_engine::flight::{ClientError, JobClient, JobInfo};
use tutti_engine::io::result_schema;

use crate::errors::tutti_error;

#[pyclass(name = "_Client", module = "tutti._tutti", frozen)]
pub(crate) struct PyClient {
    client: Mutex<JobClient>,
    rt: Runtime,
    url: String,
}

impl PyClient {
    /// Runs one call on the client, without the GIL.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        what: &str,
        f: impl AsyncFnOnce(&mut JobClient) -> Result<T, ClientError> + Send,
    ) -> PyResult<T> {
        let done = py.detach(|| {
            let mut client = self.client.lock();
            self.rt.block_on(f(&mut client))
        });
        done.map_err(|e| tutti_error(py, format!("{what} ({}): {}", self.url, chain(&e))))
    }
}

fn info_json(info: &JobInfo) -> String {
    let mut status = info.status.clone();
    status["total_records"] = info.total_records.into();
    status.to_string()
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (url, token = None, tls_ca = None))]
    fn new(
        py: Python<'_>,
        url: String,
        token: Option<String>,
        tls_ca: Option<Vec<u8>>,
    ) -> PyResult<PyClient> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| tutti_error(py, format!("cannot start the async runtime: {e}")))?;
        let client = py
            .detach(|| {
                rt.block_on(JobClient::connect_with_ca(
                    &url,
                    token.as_deref(),
                    tls_ca.as_deref(),
                ))
            })
            .map_err(|e| tutti_error(py, chain(&e)))?;
        Ok(PyClient {
            client: Mutex::new(client),
            rt,
            url,
        })
    }

    /// Uploads `tasks` (an Arrow C stream) as a job with `spec` (JSON); returns the job id once
    /// the server has the tasks on disk.
    fn submit(
        &self,
        py: Python<'_>,
        tasks: PyArrowType<RecordBatchStreamReader>,
        spec: String,
    ) -> PyResult<String> {
        let batches = py
            .detach(|| tasks.0.collect::<Result<Vec<RecordBatch>, _>>())
            .map_err(|e| tutti_error(py, format!("cannot read the tasks: {e}")))?;
        self.call(py, "submit", async move |c| {
            c.submit(spec.as_bytes(), batches).await
        })
    }

    /// The job's state, progress and counts, as JSON.
    fn status(&self, py: Python<'_>, job: String) -> PyResult<String> {
        self.call(py, "status", async move |c| c.info(&job).await)
            .map(|info| info_json(&info))
    }

    /// Every job the server knows, oldest first, as a JSON list.
    fn jobs(&self, py: Python<'_>) -> PyResult<String> {
        let jobs = self.call(py, "jobs", async |c| c.jobs().await)?;
        let list: Vec<serde_json::Value> = jobs
            .iter()
            .map(|j| serde_json::from_str(&info_json(j)).expect("JSON"))
            .collect();
        Ok(serde_json::Value::from(list).to_string())
    }

    /// The results written so far, as a record batch reader in the result schema.
    fn results(
        &self,
        py: Python<'_>,
        job: String,
    ) -> PyResult<PyArrowType<Box<dyn RecordBatchReader + Send>>> {
        let (schema, batches) = self.call(py, "results", async move |c| {
            let mut stream = c.results(&job).await?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.try_next().await? {
                batches.push(batch);
            }
            let schema: SchemaRef = match batches.first() {
                Some(b) => b.schema(),
                None => stream.schema().cloned().unwrap_or_else(result_schema),
            };
            Ok((schema, batches))
        })?;
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        Ok(PyArrowType(Box::new(reader)))
    }

    /// Cancels the job; the server's reply as JSON.
    fn cancel(&self, py: Python<'_>, job: String) -> PyResult<String> {
        self.call(py, "cancel", async move |c| c.cancel(&job).await)
            .map(|v| v.to_string())
    }

    /// The job's ledger summary, as JSON.
    fn stats(&self, py: Python<'_>, job: String) -> PyResult<String> {
        self.call(py, "stats", async move |c| c.stats(&job).await)
            .map(|v| v.to_string())
    }
}
