//! tokio-tungstenite as a handshake server, for `benches/compare.sh`: a current-thread
//! runtime (one core, like the other contenders), 4 KiB read buffer, upgrade, Close(1000);
//! with `--echo`, echoes messages instead (for holds).
//!
//! `cargo bench --bench contender_tokio_tungstenite -- --listen 127.0.0.1:0`; without
//! `--listen` (as under a plain `cargo bench`) it only says how to run it.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(addr) = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
    else {
        println!("a contender for benches/compare.sh; run it with --listen ADDR");
        return Ok(());
    };
    let echo = args.iter().any(|a| a == "--echo");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr.as_str()).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let config = WebSocketConfig::default().read_buffer_size(4096);
                let Ok(mut websocket) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                else {
                    return;
                };
                if echo {
                    // Held connections: echo until the client goes (tungstenite answers pings).
                    while let Some(Ok(message)) = websocket.next().await {
                        if message.is_text() || message.is_binary() {
                            let _ = websocket.send(message).await;
                        }
                    }
                } else {
                    let _ = websocket.close(None).await;
                }
            });
        }
    })
}
