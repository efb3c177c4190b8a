//! The vpcd server against a fake vpcd driver (a TCP listener playing pcscd): control
//! messages, APDUs, bad frames, card removal on demand, tearing, pcscd restarts, shutdown.
#![cfg(feature = "std")]

#[path = "support/purse_card.rs"]
mod purse_card;

use cardvm::transport::vpcd::{DEFAULT_ATR, VpcdConfig, VpcdError, VpcdHandle, VpcdServer};
use purse_card::{GET_BALANCE, PurseCard, SELECT_PURSE, fci};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn config(addr: SocketAddr) -> VpcdConfig {
    VpcdConfig {
        reconnect_delay: Duration::from_millis(20),
        reinsert_delay: Duration::from_millis(20),
        poll_interval: Duration::from_millis(10),
        io_timeout: Duration::from_millis(500),
        max_connect_failures: Some(500),
        ..VpcdConfig::new(addr.to_string())
    }
}

type Server = JoinHandle<(Result<(), VpcdError>, PurseCard)>;

fn start(card: PurseCard, cfg: VpcdConfig) -> (VpcdHandle, Server) {
    let mut server = VpcdServer::new(card, cfg);
    let handle = server.handle();
    let join = std::thread::spawn(move || {
        let r = server.run();
        (r, server.into_card())
    });
    (handle, join)
}

/// Accepts the next connection from the server (the card being inserted), bounded.
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("no connection from the vpcd server: {e}"),
        }
    }
}

fn send(s: &mut TcpStream, payload: &[u8]) {
    let mut f = (payload.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    s.write_all(&f).unwrap();
}

fn recv(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut v = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut v).unwrap();
    v
}

fn exchange(s: &mut TcpStream, apdu: &[u8]) -> Vec<u8> {
    send(s, apdu);
    recv(s)
}

/// The connection was closed by the server (EOF or reset), i.e. the card left.
fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(_) => panic!("unexpected data: connection should be closed"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ),
            "expected a closed connection, got {e}"
        ),
    }
}

fn balance_response(balance: u32) -> Vec<u8> {
    let mut v = balance.to_be_bytes().to_vec();
    v.extend_from_slice(&[0x90, 0x00]);
    v
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[test]
fn serves_control_messages_and_apdus() {
    let (l, addr) = listener();
    let (handle, join) = start(PurseCard::new(12345), config(addr));
    let mut s = accept(&l);
    send(&mut s, &[0x01]); // power on: no answer
    assert_eq!(exchange(&mut s, &[0x04]), DEFAULT_ATR.to_vec());
    let mut sel = fci();
    sel.extend_from_slice(&[0x90, 0x00]);
    assert_eq!(exchange(&mut s, &SELECT_PURSE), sel);
    assert_eq!(exchange(&mut s, &GET_BALANCE), balance_response(12345));
    send(&mut s, &[0x02]); // reset: deselects the purse
    assert_eq!(exchange(&mut s, &GET_BALANCE), vec![0x69, 0x85]);
    send(&mut s, &[0x00]); // power off
    assert_eq!(exchange(&mut s, &[0x04]), DEFAULT_ATR.to_vec());
    assert!(handle.is_connected());
    assert_eq!(handle.apdus(), 3);
    handle.shutdown();
    let (r, card) = join.join().unwrap();
    r.unwrap();
    assert_eq!(card.seen.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn survives_bad_frames_and_resynchronises() {
    let (l, addr) = listener();
    let (handle, join) = start(PurseCard::new(7), config(addr));
    let mut s = accept(&l);
    // Zero-length frame: ignored.
    send(&mut s, &[]);
    // 1-byte payload that is no control message: an (invalid) APDU, answered 6700.
    assert_eq!(exchange(&mut s, &[0x03]), vec![0x67, 0x00]);
    // 3 bytes: too short for an APDU.
    assert_eq!(exchange(&mut s, &[0x00, 0xA4, 0x04]), vec![0x67, 0x00]);
    // Garbage APDU with a wrong Lc.
    assert_eq!(
        exchange(&mut s, &[0x00, 0xA4, 0x04, 0x00, 0x20, 1]),
        vec![0x67, 0x00]
    );
    // A frame split across writes is still one frame.
    s.write_all(&[0x00, 0x0F]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(30));
    s.write_all(&SELECT_PURSE).unwrap();
    let r = recv(&mut s);
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
    assert_eq!(exchange(&mut s, &GET_BALANCE), balance_response(7));
    // A truncated frame, then pcscd goes away: the server reconnects.
    s.write_all(&[0x01, 0x00, 0xAA, 0xBB]).unwrap();
    drop(s);
    let mut s2 = accept(&l);
    assert_eq!(exchange(&mut s2, &[0x04]), DEFAULT_ATR.to_vec());
    // A frame that stalls mid-payload longer than io_timeout: the server drops it.
    s2.write_all(&[0xFF, 0xFF, 1, 2, 3]).unwrap();
    let mut s3 = accept(&l);
    assert_closed(&mut s2);
    assert_eq!(exchange(&mut s3, &[0x04]), DEFAULT_ATR.to_vec());
    assert!(handle.connections() >= 3);
    handle.shutdown();
    join.join().unwrap().0.unwrap();
}

#[test]
fn remove_after_apdus_pulls_the_card_until_inserted() {
    let (l, addr) = listener();
    let (handle, join) = start(PurseCard::new(100), config(addr));
    let mut s = accept(&l);
    handle.remove_after_apdus(1);
    let r = exchange(&mut s, &SELECT_PURSE);
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
    // The second APDU is never answered: the card leaves the field.
    send(&mut s, &GET_BALANCE);
    assert_closed(&mut s);
    assert!(!handle.is_inserted());
    assert_eq!(handle.removals(), 1);
    // Only one APDU reached the card.
    handle.insert_card();
    let mut s = accept(&l);
    assert_eq!(exchange(&mut s, &GET_BALANCE), vec![0x69, 0x85]);
    // Removal on demand while idle.
    handle.remove_card();
    assert_closed(&mut s);
    handle.insert_card();
    let mut s = accept(&l);
    assert_eq!(exchange(&mut s, &[0x04]), DEFAULT_ATR.to_vec());
    handle.shutdown();
    let (r, card) = join.join().unwrap();
    r.unwrap();
    assert_eq!(card.seen.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn card_tearing_drops_the_connection_then_reinserts() {
    let (l, addr) = listener();
    let mut card = PurseCard::new(5);
    card.tear_at = Some(2);
    let (handle, join) = start(card, config(addr));
    let mut s = accept(&l);
    let r = exchange(&mut s, &SELECT_PURSE);
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
    send(&mut s, &GET_BALANCE);
    assert_closed(&mut s);
    // Re-inserted by itself after the tear.
    let mut s = accept(&l);
    assert_eq!(exchange(&mut s, &SELECT_PURSE)[..2], [0x6F, 0x0D]);
    assert_eq!(exchange(&mut s, &GET_BALANCE), balance_response(5));
    assert_eq!(handle.removals(), 1);
    handle.shutdown();
    join.join().unwrap().0.unwrap();
}

#[test]
fn reconnects_when_pcscd_restarts() {
    let (l, addr) = listener();
    let (handle, join) = start(PurseCard::new(1), config(addr));
    let mut s = accept(&l);
    assert_eq!(exchange(&mut s, &[0x04]), DEFAULT_ATR.to_vec());
    // pcscd stops: listener and connection gone.
    drop(s);
    drop(l);
    std::thread::sleep(Duration::from_millis(100));
    // pcscd starts again on the same port.
    let l = TcpListener::bind(addr).unwrap();
    let mut s = accept(&l);
    assert_eq!(exchange(&mut s, &[0x04]), DEFAULT_ATR.to_vec());
    assert!(handle.connections() >= 2);
    handle.shutdown();
    join.join().unwrap().0.unwrap();
}

#[test]
fn gives_up_after_the_attempt_limit() {
    let (l, addr) = listener();
    drop(l); // nothing listens there now
    let cfg = VpcdConfig {
        max_connect_failures: Some(3),
        ..config(addr)
    };
    let (_handle, join) = start(PurseCard::new(1), cfg);
    let (r, _) = join.join().unwrap();
    assert!(
        matches!(r, Err(VpcdError::Connect { attempts: 3, .. })),
        "{r:?}"
    );
}

#[test]
fn shutdown_while_waiting_to_connect() {
    let (l, addr) = listener();
    drop(l);
    let cfg = VpcdConfig {
        max_connect_failures: None,
        ..config(addr)
    };
    let (handle, join) = start(PurseCard::new(1), cfg);
    std::thread::sleep(Duration::from_millis(50));
    handle.shutdown();
    join.join().unwrap().0.unwrap();
}
