//! Wire protocols. Each one turns its connections into [`crate::wsgi::WsgiRequest`]s
//! and writes back what the dispatcher returns; everything after the environ
//! is built is shared.

pub mod bare_lf;
pub mod http;
pub mod uwsgi;
