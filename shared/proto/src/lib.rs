//! The suite's gRPC contracts, generated from `proto/` at build time, and
//! the one file descriptor set that every server registers for reflection.
#![allow(missing_docs)]

/// Encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/crm_descriptor.bin"));

/// `crm.common.v1`: shared types.
pub mod common {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("crm.common.v1");
    }
}

/// `crm.identification.v1`: Identify.
pub mod identification {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("crm.identification.v1");
    }
}

/// `crm.interaction.v1`: Interact.
pub mod interaction {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("crm.interaction.v1");
    }
}

/// `crm.differentiation.v1`: Differentiate.
pub mod differentiation {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("crm.differentiation.v1");
    }
}

/// `crm.personalization.v1`: Customize.
pub mod personalization {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("crm.personalization.v1");
    }
}

/// `crm.gateway.v1`: the value chain.
pub mod gateway {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("crm.gateway.v1");
    }
}
