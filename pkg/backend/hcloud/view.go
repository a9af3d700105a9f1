package hcloud

import (
	"maps"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
)

// What this process knows of its cluster's volumes, per token: the last
// listing of them all, kept up to date with what this process has done
// and read since. It serves two things that would otherwise cost requests
// out of the budget of 3600 an hour:
//
//   - ListVolumes (each metrics scrape counts the volumes with it): the
//     listing costs one request per 50 volumes, so it is made again only
//     when older than listEvery, or listPerPage per request it took
//     (at most 180 requests an hour, 5% of the budget, however many
//     volumes the project has). Changes made outside this process (by
//     another Swarm leader, in the console) show after that time.
//   - VolumeForPublish, once, for a volume this process has just created
//     or detached (see idle).
type view struct {
	vols     map[int64]*entry
	listed   time.Time // when the last listing started; zero: never listed
	pages    int       // the requests it took
	inflight int       // listings under way
}

type entry struct {
	hv *hcloud.Volume // nil: deleted while a listing was under way
	at time.Time      // when learned
	// idle is when this process created or detached the volume, if
	// VolumeForPublish has not handed it out since (zero: not idle).
	// Reading or changing it meanwhile keeps it idle, with what was
	// learned.
	idle time.Time
}

const (
	listEvery   = time.Minute
	listPerPage = 20 * time.Second
	// idleFor bounds how long an idle entry is handed out: long enough
	// for the publish that follows a creation or a move.
	idleFor = 10 * time.Minute
)

// viewOf returns the view of a token; the caller holds b.mu.
func (b *Backend) viewOf(token [32]byte) *view {
	v := b.views[token]
	if v == nil {
		v = &view{vols: map[int64]*entry{}}
		b.views[token] = v
	}
	return v
}

// snapshot is a copy of hv that later changes to hv do not reach.
func snapshot(hv *hcloud.Volume) *hcloud.Volume {
	c := *hv
	c.Labels = maps.Clone(hv.Labels)
	if hv.Server != nil {
		c.Server = &hcloud.Server{ID: hv.Server.ID}
	}
	return &c
}

// saw records the volume as the API has just described it, or as an
// action of this call has just left it. With idle, this call created or
// detached it, and VolumeForPublish may hand it out once without reading
// it. An attached volume is not idle.
func (o *op) saw(hv *hcloud.Volume, idle bool) {
	o.b.mu.Lock()
	defer o.b.mu.Unlock()
	v := o.b.viewOf(o.token)
	e := &entry{hv: snapshot(hv), at: o.b.now()}
	switch old := v.vols[hv.ID]; {
	case hv.Server != nil:
	case idle:
		e.idle = e.at
	case old != nil:
		e.idle = old.idle
	}
	v.vols[hv.ID] = e
}

// gone records that the volume is deleted, or not this cluster's. While
// a listing is under way, which may still list it, a tombstone says so.
func (o *op) gone(id int64) {
	o.b.mu.Lock()
	defer o.b.mu.Unlock()
	v := o.b.viewOf(o.token)
	if v.inflight > 0 {
		v.vols[id] = &entry{at: o.b.now()}
	} else {
		delete(v.vols, id)
	}
}

// takeIdle returns, once, the volume this process has created or
// detached within idleFor, or nil.
func (o *op) takeIdle(id int64) *hcloud.Volume {
	o.b.mu.Lock()
	defer o.b.mu.Unlock()
	e := o.b.viewOf(o.token).vols[id]
	if e == nil || e.idle.IsZero() || e.hv == nil || o.b.now().Sub(e.idle) > idleFor {
		return nil
	}
	e.idle = time.Time{}
	return snapshot(e.hv)
}

// listing returns this cluster's volumes: from the view while its
// listing is recent enough, else listed again.
func (o *op) listing() ([]*hcloud.Volume, error) {
	b := o.b
	b.mu.Lock()
	v := b.viewOf(o.token)
	if !v.listed.IsZero() && b.now().Sub(v.listed) < max(listEvery, time.Duration(v.pages)*listPerPage) {
		out := make([]*hcloud.Volume, 0, len(v.vols))
		for _, e := range v.vols {
			if e.hv != nil {
				out = append(out, snapshot(e.hv))
			}
		}
		b.mu.Unlock()
		return out, nil
	}
	start := b.now()
	v.inflight++
	b.mu.Unlock()

	const perPage = 50
	hvs, err := o.api.Volume.AllWithOpts(o.ctx, hcloud.VolumeListOpts{ListOpts: hcloud.ListOpts{
		LabelSelector: b.clusterSelector(), PerPage: perPage}})
	b.mu.Lock()
	defer b.mu.Unlock()
	v.inflight--
	if err != nil {
		return nil, err
	}
	// What this process learned while the listing was under way is newer
	// than the listing: a volume created or deleted meanwhile is kept as
	// this process left it.
	vols := map[int64]*entry{}
	for _, hv := range hvs {
		e := &entry{hv: snapshot(hv), at: start}
		if old := v.vols[hv.ID]; old != nil {
			if !old.at.Before(start) {
				e = old
			} else if hv.Server == nil {
				e.idle = old.idle
			}
		}
		vols[hv.ID] = e
	}
	for id, e := range v.vols {
		if _, listed := vols[id]; !listed && !e.at.Before(start) {
			vols[id] = e
		}
	}
	if v.inflight == 0 { // no listing left that could bring them back
		for id, e := range vols {
			if e.hv == nil {
				delete(vols, id)
			}
		}
	}
	v.vols, v.listed, v.pages = vols, start, max(1, (len(hvs)+perPage-1)/perPage)
	out := make([]*hcloud.Volume, 0, len(vols))
	for _, e := range vols {
		if e.hv != nil {
			out = append(out, snapshot(e.hv))
		}
	}
	return out, nil
}
