//go:build !linux

package desktop

import (
	"context"
	"image"
)

// Display is a running virtual screen (Linux only for now).
type Display struct {
	Number        int
	AuthFile      string
	Width, Height int
}

// Start is not implemented on this operating system yet.
func Start(ctx context.Context, o Options) (*Display, error) { return nil, ErrUnsupported }

// Env is empty here.
func (d *Display) Env() []string { return nil }

// Close does nothing here.
func (d *Display) Close() error { return nil }

// Screenshot is not implemented on this operating system yet.
func (d *Display) Screenshot(ctx context.Context) (*image.RGBA, error) { return nil, ErrUnsupported }

// ScreenshotPNG is not implemented on this operating system yet.
func (d *Display) ScreenshotPNG(ctx context.Context) ([]byte, error) { return nil, ErrUnsupported }
