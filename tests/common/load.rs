//! Continuous Checks that must all be allowed while a test changes
//! something underneath (a registry rewrite, a fragment churn, a bundle
//! rotation): "zero failed Checks under load".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use super::procs::poll;

/// Tasks that each Check one request in a loop until stopped, recording
/// every answer that is not an OK (a denial or a gRPC error).
pub struct AllowLoad {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl AllowLoad {
    /// One task per client, each sending `req` until [`AllowLoad::stop`].
    pub fn start(clients: Vec<AuthorizationClient<Channel>>, req: CheckRequest) -> AllowLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let tasks = clients
            .into_iter()
            .map(|mut client| {
                let (req, stop, sent) = (req.clone(), stop.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut wrong = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.check(req.clone()).await {
                            Ok(resp) => {
                                if !matches!(
                                    resp.into_inner().http_response,
                                    Some(HttpResponse::OkResponse(_))
                                ) {
                                    wrong.push("denied".to_string());
                                }
                            }
                            Err(e) => wrong.push(e.to_string()),
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    wrong
                })
            })
            .collect();
        AllowLoad { stop, sent, tasks }
    }

    /// Checks answered so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until `more` Checks beyond the current count were answered.
    pub async fn wait_for(&self, more: usize, within: Duration) {
        let target = self.sent() + more;
        let sent = self.sent.clone();
        poll("the load to make progress", within, move || {
            let n = sent.load(Ordering::Relaxed);
            async move { (n >= target).then_some(()) }
        })
        .await;
    }

    /// Stops every task: the number of Checks answered, and every answer
    /// that was not an OK.
    pub async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut wrong = Vec::new();
        for task in self.tasks {
            wrong.extend(task.await.expect("a load task panicked"));
        }
        (self.sent.load(Ordering::Relaxed), wrong)
    }
}
