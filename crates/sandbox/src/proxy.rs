//! The SSH proxy of a VM: a host TCP listener (`proxy_listen:ssh_port`) relaying every
//! connection to the VM's port 22. One task per VM, aborted when the VM is deleted.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Binds the listener (so a port taken by another program is detected at once).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Relays every accepted connection to `target` until aborted.
pub fn spawn(listener: TcpListener, target: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                // Out of descriptors or similar: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                let Ok(Ok(mut vm)) = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    TcpStream::connect(target),
                )
                .await
                else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = vm.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut vm).await;
            });
        }
    })
}
