//! SCM_RIGHTS fds out of recvmsg ancillary data (x86_64 `struct cmsghdr`).

const CMSG_HEADER: usize = 16;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;

/// fds received in `control` (the captured prefix of `control_len` bytes),
/// and whether the capture held all of them.
pub fn received_fds(control: &[u8], control_len: u32) -> (Vec<u32>, bool) {
    let mut fds = Vec::new();
    let mut at = 0usize;
    let mut complete = control.len() >= control_len as usize;
    while control.len().saturating_sub(at) >= CMSG_HEADER {
        let len = usize::from_ne_bytes(control[at..at + 8].try_into().expect("8 bytes"));
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().expect("4 bytes"));
        let kind = i32::from_ne_bytes(control[at + 12..at + 16].try_into().expect("4 bytes"));
        if len < CMSG_HEADER {
            // Malformed: nothing after it can be trusted.
            complete = false;
            break;
        }
        let end = at.saturating_add(len);
        if level == SOL_SOCKET && kind == SCM_RIGHTS {
            let data_end = end.min(control.len());
            if end > control.len() {
                complete = false;
            }
            for chunk in control[at + CMSG_HEADER..data_end].chunks_exact(4) {
                fds.push(u32::from_ne_bytes(chunk.try_into().expect("4 bytes")));
            }
        }
        // Next header is 8-byte aligned.
        at = end.saturating_add(7) & !7;
    }
    (fds, complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(CMSG_HEADER + data.len()).to_ne_bytes());
        out.extend_from_slice(&level.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
        while out.len() % 8 != 0 {
            out.push(0);
        }
        out
    }

    fn fds(list: &[u32]) -> Vec<u8> {
        list.iter().flat_map(|fd| fd.to_ne_bytes()).collect()
    }

    #[test]
    fn finds_rights_among_other_messages() {
        let mut control = cmsg(SOL_SOCKET, 2, &[0; 12]); // SCM_CREDENTIALS
        control.extend(cmsg(SOL_SOCKET, SCM_RIGHTS, &fds(&[5, 9, 12])));
        let len = control.len() as u32;
        assert_eq!(received_fds(&control, len), (vec![5, 9, 12], true));
    }

    #[test]
    fn a_cut_capture_is_reported_incomplete() {
        let control = cmsg(SOL_SOCKET, SCM_RIGHTS, &fds(&[3, 4, 5, 6]));
        let len = control.len() as u32;
        let (got, complete) = received_fds(&control[..24], len);
        assert_eq!(got, vec![3, 4]);
        assert!(!complete);
    }

    #[test]
    fn garbage_does_not_loop_or_panic() {
        let mut control = vec![0u8; 40];
        assert_eq!(received_fds(&control, 40), (vec![], false));
        control[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        control[8..12].copy_from_slice(&SOL_SOCKET.to_ne_bytes());
        control[12..16].copy_from_slice(&SCM_RIGHTS.to_ne_bytes());
        let (got, complete) = received_fds(&control, 40);
        assert_eq!(got.len(), 6);
        assert!(!complete);
        assert_eq!(received_fds(&[], 0), (vec![], true));
    }
}
