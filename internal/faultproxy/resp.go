package faultproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// maxBulk bounds one bulk string or aggregate length the proxy accepts (the
// Redis default proto-max-bulk-len is 512 MB; tests never come near it).
const maxBulk = 512 << 20

var errProtocol = errors.New("faultproxy: protocol error")

// readCommand reads one request: a RESP array of bulk strings, as clients
// send, or an inline command (a line of words, as telnet and the PING of a
// health check send). It returns the raw bytes, to forward as they came, and
// the arguments (args[0] is the command name).
func readCommand(r *bufio.Reader) (raw []byte, args [][]byte, err error) {
	line, err := readLine(r, nil)
	if err != nil {
		return nil, nil, err
	}
	if line[0] != '*' {
		return line, bytes.Fields(line), nil
	}
	n, err := length(line)
	if err != nil {
		return nil, nil, err
	}
	raw = line
	args = make([][]byte, 0, max(n, 0))
	for range n {
		start := len(raw)
		raw, err = readLine(r, raw)
		if err != nil {
			return nil, nil, err
		}
		hdr := raw[start:]
		if hdr[0] != '$' {
			return nil, nil, fmt.Errorf("%w: command argument %q", errProtocol, hdr)
		}
		size, err := length(hdr)
		if err != nil || size < 0 {
			return nil, nil, fmt.Errorf("%w: bulk length %q", errProtocol, hdr)
		}
		start = len(raw)
		if raw, err = readN(r, raw, size+2); err != nil {
			return nil, nil, err
		}
		args = append(args, raw[start:start+size])
	}
	return raw, args, nil
}

// readReply reads one reply of RESP2 or RESP3 and returns its raw bytes;
// push reports an out-of-band push message (RESP3 '>'), which answers no
// request.
func readReply(r *bufio.Reader) (raw []byte, push bool, err error) {
	raw, err = appendReply(r, nil)
	if err != nil {
		return nil, false, err
	}
	return raw, raw[0] == '>', nil
}

// appendReply appends one reply (with its nested elements) to raw.
func appendReply(r *bufio.Reader, raw []byte) ([]byte, error) {
	start := len(raw)
	raw, err := readLine(r, raw)
	if err != nil {
		return nil, err
	}
	line := raw[start:]
	switch line[0] {
	case '+', '-', ':', '_', ',', '#', '(':
		return raw, nil
	case '$', '!', '=': // bulk string, bulk error, verbatim string
		n, err := length(line)
		if err != nil || n < 0 { // $-1: the RESP2 null
			return raw, err
		}
		return readN(r, raw, n+2)
	case '*', '~', '>', '%', '|': // array, set, push, map, attribute
		n, err := length(line)
		if err != nil || n < 0 { // *-1: the RESP2 null array
			return raw, err
		}
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		for range n {
			if raw, err = appendReply(r, raw); err != nil {
				return nil, err
			}
		}
		if line[0] == '|' { // an attribute precedes the reply it annotates
			return appendReply(r, raw)
		}
		return raw, nil
	}
	return nil, fmt.Errorf("%w: reply type %q", errProtocol, line[0])
}

// readLine appends one CRLF-terminated line (CRLF included) to raw and
// returns raw; the line is raw[len(raw before):].
func readLine(r *bufio.Reader, raw []byte) ([]byte, error) {
	start := len(raw)
	for {
		chunk, err := r.ReadSlice('\n')
		raw = append(raw, chunk...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if err == io.EOF && len(raw) > start {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(raw)-start > maxBulk {
			return nil, fmt.Errorf("%w: line too long", errProtocol)
		}
	}
	if len(raw)-start < 3 || raw[len(raw)-2] != '\r' {
		return nil, fmt.Errorf("%w: bad line %q", errProtocol, raw[start:])
	}
	return raw, nil
}

// readN appends exactly n bytes to raw.
func readN(r *bufio.Reader, raw []byte, n int) ([]byte, error) {
	start := len(raw)
	raw = append(raw, make([]byte, n)...)
	if _, err := io.ReadFull(r, raw[start:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return raw, nil
}

// length parses the integer of a header line such as "$5\r\n" or "*-1\r\n".
func length(line []byte) (int, error) {
	n, err := strconv.Atoi(string(line[1 : len(line)-2]))
	if err != nil || n > maxBulk {
		return 0, fmt.Errorf("%w: bad length %q", errProtocol, line)
	}
	return n, nil
}
