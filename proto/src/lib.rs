//! Generated gRPC types: the CSI spec (`csi::v1`) and our internal services (`chunk::v1`, `meta::v1`).

/// The Container Storage Interface, package `csi.v1`, exactly as the spec publishes it.
pub mod csi {
    /// CSI v1 messages and the Identity, Controller, GroupController, SnapshotMetadata and Node services.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("csi.v1");
    }
}

/// The storage-node chunk API, package `cairn.chunk.v1`.
pub mod chunk {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("cairn.chunk.v1");
    }
}

/// The metadata service API, package `cairn.meta.v1`.
pub mod meta {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("cairn.meta.v1");
    }
}
