//! The RFC 6455 opening handshake, with no I/O.
//!
//! Everything here is a pure function of bytes: the epoll and io_uring reactors, the proxy
//! mode and the load generator drive the same code. Nothing allocates.
//!
//! | job | function |
//! |---|---|
//! | parse and validate a request | [`parse_request`] → [`Parse`] |
//! | the accept token | [`accept_key`] |
//! | answer 101 | [`write_switching_protocols`] |
//! | answer a client not upgraded | [`write_rejection`] ([`Answer`]: a [`Rejection`] of the request, or the edge's [`Refusal`] → [`Status`] + reason) |
//! | client: write a request, check the answer | [`write_request`], [`check_response`] |
//!
//! # Calling [`parse_request`] incrementally
//! Append each read to one buffer and call [`parse_request`] on the whole buffer until it
//! answers something other than [`Parse::Partial`]. The buffer never needs to hold more than
//! [`Policy::max_header_bytes`]: at that size the answer is never `Partial`. On
//! [`Parse::Upgrade`], bytes from [`Upgrade::header_len`] on are the client's first frames.

mod accept;
mod answer;
mod client;
mod policy;
mod rejection;
mod request;
mod response;
pub(crate) mod tokens;

pub use accept::{accept_key, is_valid_key, key_from_nonce, ACCEPT_LEN, KEY_LEN, WEBSOCKET_GUID};
pub use answer::{Answer, Refusal};
pub use client::{
    check_response, check_response_with, write_request, ClientRequest, ResponseCheck,
    ResponseError, MAX_RESPONSE_HEADER_BYTES,
};
pub use policy::{
    is_under, Policy, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HTTP_BODY_BYTES, MAX_HEADERS,
};
pub use rejection::{Rejection, Status};
pub use request::{parse_request, HttpRequest, Parse, Upgrade};
pub use response::{write_rejection, write_switching_protocols, BufferTooSmall, MAX_RESPONSE_LEN};
