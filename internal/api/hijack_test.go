package api

import (
	"bufio"
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRebufferKeepsBufferedBytes: what the old buffers held is neither lost
// nor reordered, and the new buffers are small.
func TestRebufferKeepsBufferedBytes(t *testing.T) {
	t.Parallel()
	server, client := net.Pipe()
	defer server.Close()
	defer client.Close()
	old := bufio.NewReadWriter(bufio.NewReaderSize(server, 4096), bufio.NewWriterSize(server, 4096))
	fromServer := make(chan string, 1)
	go func() {
		_, _ = client.Write([]byte("early,"))
		b := make([]byte, len("pending+new"))
		_, _ = io.ReadFull(client, b)
		fromServer <- string(b)
		_, _ = client.Write([]byte("late"))
	}()
	_, err := old.Reader.Peek(len("early,")) // buffered, as net/http may have
	require.NoError(t, err)
	_, _ = old.Writer.WriteString("pending+")

	rw, err := rebuffer(server, old, hijackBufSize)
	require.NoError(t, err)
	require.Equal(t, hijackBufSize, rw.Reader.Size())
	require.Equal(t, hijackBufSize, rw.Writer.Size())
	_, _ = rw.WriteString("new")
	require.NoError(t, rw.Flush())
	require.Equal(t, "pending+new", <-fromServer)
	got := make([]byte, len("early,late"))
	_, err = io.ReadFull(rw, got)
	require.NoError(t, err)
	require.Equal(t, "early,late", string(got))
}
