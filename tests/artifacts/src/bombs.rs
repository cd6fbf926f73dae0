//! Compile bombs, generated: components whose compilation costs far more than their size
//! (each a component holding one core module, assembled byte by byte, so that a test can
//! make them as large as it needs without a build step).

/// `n` as unsigned LEB128.
fn leb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A function body: `locals` locals of type i32, then `code`, then `end`.
pub fn body(locals: u32, code: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(code.len() + 8);
    if locals == 0 {
        b.push(0);
    } else {
        b.push(1);
        leb(u64::from(locals), &mut b);
        b.push(0x7f);
    }
    b.extend_from_slice(code);
    b.push(0x0b);
    b
}

/// A component whose one core module defines `bodies` (each a `[] -> []` function built
/// with [`body`]). It exports nothing: admission compiles it before it looks at exports.
pub fn component(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module);
    let mut funcs = Vec::new();
    leb(bodies.len() as u64, &mut funcs);
    funcs.extend(std::iter::repeat_n(0u8, bodies.len()));
    section(3, &funcs, &mut module);
    let mut code = Vec::new();
    leb(bodies.len() as u64, &mut code);
    for b in bodies {
        leb(b.len() as u64, &mut code);
        code.extend_from_slice(b);
    }
    section(10, &code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}

/// One function whose cost to compile grows with the product of its locals and its
/// branches: a loop that reads each of `locals` locals and branches back to its head
/// `branches` times. Every local read in the loop becomes a parameter of its head and
/// every branch passes all of them: about `locals * branches` values for a body of
/// `4 * (locals + branches)` bytes, so memory and time grow with the square of its size.
pub fn quadratic(locals: u32, branches: u32) -> Vec<u8> {
    let mut code = vec![0x03, 0x40]; // loop (empty block type)
    for i in 0..locals {
        code.push(0x20); // local.get i
        leb(u64::from(i), &mut code);
        code.push(0x1a); // drop
    }
    for _ in 0..branches {
        code.extend_from_slice(&[0x20, 0x00, 0x0d, 0x00]); // local.get 0; br_if 0
    }
    code.push(0x0b); // end (loop)
    component(&[body(locals, &code)])
}

/// One function whose compilation needs memory in the product of its locals and its
/// blocks: a chain of `blocks` `if` blocks, each setting one of `locals` locals, then a
/// read of every local. Each merge after an `if` carries every local (about
/// `locals * blocks` values): (4,000, 40,000), a 400 KB body, takes about 2 GB to compile.
pub fn locals_across_blocks(locals: u32, blocks: u32) -> Vec<u8> {
    let mut code = Vec::new();
    for j in 0..blocks {
        // local.get 0; if; i32.const 1; local.set (j % locals); end
        code.extend_from_slice(&[0x20, 0x00, 0x04, 0x40, 0x41, 0x01, 0x21]);
        leb(u64::from(j % locals.max(1)), &mut code);
        code.push(0x0b);
    }
    for i in 0..locals {
        code.push(0x20); // local.get i
        leb(u64::from(i), &mut code);
        code.push(0x1a); // drop
    }
    component(&[body(locals, &code)])
}

/// One function of `size` bytes of `nop`s with no locals: cheap per byte, refused by size.
pub fn long_function(size: usize) -> Vec<u8> {
    component(&[body(0, &vec![0x01; size])])
}
