//! The outbound network grants, wired into each request's WASI context.
//!
//! `outbound` decides which addresses and names a grant allows; this module
//! puts that decision where the guest's sockets reach the host: the socket
//! address check (connect, bind, listen, UDP) and the `resolve-addresses`
//! import. A sandbox with no grant gets no network at all.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::WasiCtxBuilder;

use super::HostState;
use crate::outbound::{Grant, Policy};

/// One request's network: the app's grants, with what it resolved.
#[derive(Default)]
pub struct Network {
    /// `None` when the app has no grant: nothing resolves or connects.
    policy: Option<Arc<Policy>>,
    /// Whether a DNS lookup was refused (and logged) already.
    dns_refused: bool,
}

impl Network {
    /// Opens `wasi` to the connections `grants` allow, at most `max` of
    /// them; with no grant, leaves it without a network.
    pub fn grant(wasi: &mut WasiCtxBuilder, grants: &Arc<[Grant]>, req_id: u64, max: usize) -> Self {
        if grants.is_empty() {
            return Self::default();
        }
        let policy = Arc::new(Policy::new(Arc::clone(grants)));
        allow_tcp(wasi, &policy, req_id, max);
        Self { policy: Some(policy), dns_refused: false }
    }
}

/// Lets a store's guest open up to `max` TCP connections that `policy`
/// grants, and nothing else: no listening, no UDP. The first refusal of a
/// request is logged, naming the address.
///
/// `max` counts local ports, not connect calls: wasmtime-wasi asks for a
/// `TcpBind` of the unspecified address once per socket that takes a port,
/// whether the guest binds it itself or a connect binds it implicitly. So
/// a guest cannot hold more than `max` of the host's ports by binding
/// sockets it never connects (it cannot listen on them either).
fn allow_tcp(wasi: &mut WasiCtxBuilder, policy: &Arc<Policy>, req_id: u64, max: usize) {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use wasmtime_wasi::sockets::SocketAddrUse;
    let policy_for_check = Arc::clone(policy);
    let warned = Arc::new(AtomicBool::new(false));
    let ports = Arc::new(AtomicUsize::new(0));
    // Name lookup is on: `restrict_name_lookup` decides which names (an IP
    // literal resolves to itself, and getaddrinfo asks for those too).
    wasi.allow_tcp(true).allow_udp(false).allow_ip_name_lookup(true).socket_addr_check(move |addr, usage| {
        let (policy, warned, ports) = (Arc::clone(&policy_for_check), Arc::clone(&warned), Arc::clone(&ports));
        Box::pin(async move {
            let refused = match usage {
                // A socket taking a local port: any port of any address
                // (the kernel picks), up to `max` of them.
                SocketAddrUse::TcpBind if addr.ip().is_unspecified() && addr.port() == 0 => {
                    if ports.fetch_add(1, Ordering::Relaxed) < max {
                        return true;
                    }
                    format!("refused an outbound connection: past --max-outbound-connections {max}")
                }
                SocketAddrUse::TcpConnect if policy.allows(addr).await => return true,
                SocketAddrUse::TcpConnect => {
                    format!("refused an outbound connection: no --allow-outbound grants {addr}")
                }
                SocketAddrUse::TcpBind | SocketAddrUse::TcpListen => {
                    "refused a bind: a sandbox cannot listen for connections".to_owned()
                }
                _ => "refused UDP: a sandbox has none".to_owned(),
            };
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(req_id, %addr, ?usage, "{refused}");
            }
            false
        })
    });
}

/// Replaces wasmtime-wasi's `resolve-addresses` with one that resolves
/// only the names the app's grants name (and IP literals, which resolve to
/// themselves and are checked at connect).
pub fn restrict_name_lookup(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host as _, ResolveAddressStream};
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, Network};
    use wasmtime_wasi::sockets::WasiSocketsView as _;
    type Reply = (Result<Resource<ResolveAddressStream>, ErrorCode>,);
    linker.allow_shadowing(true);
    let mut lookup = linker.instance("wasi:sockets/ip-name-lookup@0.2.12")?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (network, name): (Resource<Network>, String)|
         -> wasmtime::Result<Reply> {
            let state = store.data_mut();
            if !state.network.policy.as_ref().is_some_and(|p| p.may_resolve(&name)) {
                // Once per request: a guest may ask in a loop.
                if !std::mem::replace(&mut state.network.dns_refused, true) {
                    tracing::warn!(req_id = state.req_id, %name, "refused a DNS lookup: no --allow-outbound grant names {name}");
                }
                return Ok((Err(ErrorCode::PermanentResolverFailure),));
            }
            match state.sockets().resolve_addresses(network, name) {
                Ok(stream) => Ok((Ok(stream),)),
                Err(err) => err.downcast().map(|code| (Err(code),)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
