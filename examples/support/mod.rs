//! What several examples share: a gRPC OTLP metrics receiver, built from
//! the official protocol definitions, that counts what it is sent.
//!
//! It accepts gzip and requests up to 64 MiB, so that it never refuses a
//! push: the examples measure the exporter, not a receiver's limits (the
//! pipeline tests check those with tonic's defaults).

// Each example uses the part it needs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;

/// Counts the pushes received and the data points they carried.
#[derive(Clone, Debug, Default)]
pub struct CountingSink {
    pushes: Arc<AtomicU64>,
    points: Arc<AtomicU64>,
}

impl CountingSink {
    /// Starts a receiver on a free loopback port and returns its address.
    pub async fn start() -> (CountingSink, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let sink = CountingSink::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    MetricsServiceServer::new(sink.clone())
                        .max_decoding_message_size(64 << 20)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (sink, addr)
    }

    /// Pushes received so far.
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }

    /// Data points received so far, over every metric type.
    pub fn points(&self) -> u64 {
        self.points.load(Ordering::Relaxed)
    }
}

#[tonic::async_trait]
impl MetricsService for CountingSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let points: usize = request
            .get_ref()
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum();
        self.pushes.fetch_add(1, Ordering::Relaxed);
        self.points.fetch_add(points as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}
